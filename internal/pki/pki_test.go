package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func open(t *testing.T, dir string) *CA {
	t.Helper()
	ca, _, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

var (
	ip1 = netip.MustParseAddr("192.168.1.11")
	ip6 = netip.MustParseAddr("fd00::11")
)

func TestIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	ca, made, err := Open(dir)
	if err != nil || !made {
		t.Fatalf("Open: got made %v, %v; want a new CA", made, err)
	}
	if _, err := ca.Member("etcd1", []netip.Addr{ip1, ip6}, []string{"etcd1.example.net"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"hv1", "root"} {
		if _, err := ca.Client(name); err != nil {
			t.Fatal(err)
		}
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(read(t, filepath.Join(dir, "ca.crt"))) {
		t.Fatal("ca.crt holds no certificate")
	}
	tests := []struct {
		name    string
		usage   []x509.ExtKeyUsage
		notFor  x509.ExtKeyUsage // a use it must not verify for
		ips     []string
		dnsName string
	}{
		{"etcd1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, x509.ExtKeyUsageCodeSigning, []string{"192.168.1.11", "fd00::11"}, "etcd1.example.net"},
		{"hv1", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, x509.ExtKeyUsageServerAuth, nil, ""},
		{"root", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, x509.ExtKeyUsageServerAuth, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pair, err := tls.LoadX509KeyPair(filepath.Join(dir, tt.name+".crt"), filepath.Join(dir, tt.name+".key"))
			if err != nil {
				t.Fatalf("key and certificate: %v", err)
			}
			cert := pair.Leaf
			if got := cert.Subject.CommonName; got != tt.name {
				t.Errorf("common name: got %q, want %q", got, tt.name)
			}
			if !slices.Equal(cert.ExtKeyUsage, tt.usage) {
				t.Errorf("extended key usage: got %v, want %v", cert.ExtKeyUsage, tt.usage)
			}
			for _, u := range tt.usage {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
					t.Errorf("verifying for %v: %v", u, err)
				}
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tt.notFor}}); err == nil {
				t.Errorf("verifying for %v: got success, want an error", tt.notFor)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.ips) {
				t.Errorf("IP SANs: got %v, want %v", ips, tt.ips)
			}
			for _, host := range append(tt.ips, tt.dnsName) {
				if host == "" {
					continue
				}
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
					t.Errorf("verifying for %s: %v", host, err)
				}
			}
			if tt.dnsName == "" {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "192.168.1.11"}); err == nil {
					t.Errorf("a client's certificate verifies as a server's for 192.168.1.11")
				}
			}
			if got, want := mode(t, filepath.Join(dir, tt.name+".key")), os.FileMode(0o600); got != want {
				t.Errorf("key's mode: got %v, want %v", got, want)
			}
			if cert.NotAfter.After(ca.Certificate().NotAfter) {
				t.Errorf("valid until %v, after its CA (%v)", cert.NotAfter, ca.Certificate().NotAfter)
			}
		})
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "ca.key"): 0o600, filepath.Join(dir, "ca.crt"): 0o644} {
		if got := mode(t, path); got != want {
			t.Errorf("%s's mode: got %v, want %v", path, got, want)
		}
	}
	if !ca.Certificate().IsCA || ca.Certificate().MaxPathLen != 0 || !ca.Certificate().MaxPathLenZero {
		t.Errorf("CA: got IsCA %v, MaxPathLen %d; want a CA that issues no CA", ca.Certificate().IsCA, ca.Certificate().MaxPathLen)
	}
}

// TestAgain checks that issuing again changes nothing, and that a
// certificate that says something else is refused, not replaced.
func TestAgain(t *testing.T) {
	dir := t.TempDir()
	ca := open(t, dir)
	if _, err := ca.Member("etcd1", []netip.Addr{ip1}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Client("hv1"); err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		before[f] = read(t, f)
	}

	again, made, err := Open(dir)
	if err != nil || made {
		t.Fatalf("Open again: got made %v, %v; want the same CA", made, err)
	}
	if made, err := again.Member("etcd1", []netip.Addr{ip1}, nil); err != nil || made {
		t.Errorf("member again: got made %v, %v; want nothing made", made, err)
	}
	if made, err := again.Client("hv1"); err != nil || made {
		t.Errorf("client again: got made %v, %v; want nothing made", made, err)
	}

	refused := []struct {
		name string
		do   func() (bool, error)
		want string
	}{
		{"member at another address", func() (bool, error) {
			return again.Member("etcd1", []netip.Addr{netip.MustParseAddr("192.168.1.99")}, nil)
		}, "addresses"},
		{"member with a name added", func() (bool, error) { return again.Member("etcd1", []netip.Addr{ip1}, []string{"etcd1.lan"}) }, "names"},
		{"member as a client", func() (bool, error) { return again.Client("etcd1") }, "not a client"},
		{"client as a member", func() (bool, error) { return again.Member("hv1", []netip.Addr{ip1}, nil) }, "not an etcd member"},
	}
	for _, tt := range refused {
		made, err := tt.do()
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "remove") || made {
			t.Errorf("%s: got made %v, %v; want an error about %s that says what to remove", tt.name, made, err, tt.want)
		}
	}

	files, _ = filepath.Glob(filepath.Join(dir, "*"))
	if len(files) != len(before) {
		t.Errorf("files: got %v, want %d as before", files, len(before))
	}
	for f, b := range before {
		if got := read(t, f); string(got) != string(b) {
			t.Errorf("%s changed", f)
		}
	}

	// A lost certificate is issued again for the key there is.
	os.Remove(filepath.Join(dir, "hv1.crt"))
	if made, err := again.Client("hv1"); err != nil || !made {
		t.Fatalf("client without its certificate: got made %v, %v; want it issued", made, err)
	}
	if got := read(t, filepath.Join(dir, "hv1.key")); string(got) != string(before[filepath.Join(dir, "hv1.key")]) {
		t.Errorf("hv1.key was replaced")
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "hv1.crt"), filepath.Join(dir, "hv1.key")); err != nil {
		t.Errorf("the new certificate is not for the key: %v", err)
	}
}

// TestOtherCA checks that files of another CA are refused, not used or
// replaced.
func TestOtherCA(t *testing.T) {
	ours, theirs := t.TempDir(), t.TempDir()
	ca, other := open(t, ours), open(t, theirs)
	if _, err := other.Client("hv2"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"hv2.crt", "hv2.key"} {
		if err := os.WriteFile(filepath.Join(ours, f), read(t, filepath.Join(theirs, f)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if made, err := ca.Client("hv2"); err == nil || !strings.Contains(err.Error(), "not signed by") || made {
		t.Errorf("another CA's certificate: got made %v, %v; want it refused", made, err)
	}

	// A CA whose key and certificate do not match.
	os.Remove(filepath.Join(ours, "ca.crt"))
	os.WriteFile(filepath.Join(ours, "ca.crt"), read(t, filepath.Join(theirs, "ca.crt")), 0o644)
	if _, _, err := Open(ours); err == nil || !strings.Contains(err.Error(), "is not the CA certificate") {
		t.Errorf("mismatched CA: got %v, want it refused", err)
	}

	// Half a CA.
	os.Remove(filepath.Join(theirs, "ca.crt"))
	if _, _, err := Open(theirs); err == nil || !strings.Contains(err.Error(), "only one of") {
		t.Errorf("a CA key without its certificate: got %v, want it refused", err)
	}
}

func TestBadName(t *testing.T) {
	dir := t.TempDir()
	ca := open(t, dir)
	before, _ := os.ReadDir(dir)
	for _, name := range []string{"", "Hv1", "1hv", "hv1-", "hv_1", "../hv1", "a/b", "hv1.key", "ca", strings.Repeat("h", 64)} {
		if made, err := ca.Client(name); err == nil || made {
			t.Errorf("Client(%q): got made %v, %v; want an error", name, made, err)
		}
		if made, err := ca.Member(name, []netip.Addr{ip1}, nil); err == nil || made {
			t.Errorf("Member(%q): got made %v, %v; want an error", name, made, err)
		}
	}
	if _, err := ca.Member("etcd1", nil, nil); err == nil {
		t.Errorf("a member without an address: got success, want an error")
	}
	if _, err := ca.Member("etcd1", nil, []string{"a name/with a slash"}); err == nil {
		t.Errorf("a member with a bad DNS name: got success, want an error")
	}
	after, _ := os.ReadDir(dir)
	if len(after) != len(before) {
		t.Errorf("bad names left files: got %d entries, want %d", len(after), len(before))
	}
}
