// Package pki makes the fleet's small certificate authority and the
// certificates etcd and its clients use, in the layout fleet.Certs reads:
//
//	DIR/ca.crt, DIR/ca.key       the CA (ECDSA P-256, 10 years); ca.key stays with the admin
//	DIR/NAME.crt, DIR/NAME.key   an etcd member's (server and client, for
//	                             client and peer TLS) or a client's, whose
//	                             common name etcd takes as its user: a
//	                             host's name, or "root" for the admin
//
// Nothing is overwritten: an existing CA is reused, an existing key is
// kept (a missing certificate is issued for it), and an existing
// certificate that does not say what is asked is refused, so that running
// the same issue twice changes nothing and a changed one says what to
// remove.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Validity is how long the CA and the certificates it issues are valid: a
// small fleet should not have to renew them on a schedule.
const Validity = 10 * 365 * 24 * time.Hour

// CA is the fleet's certificate authority in a directory.
type CA struct {
	Dir  string
	cert *x509.Certificate
	key  crypto.Signer
}

// Open returns the CA of dir, making the directory (0700) and the CA
// unless they exist. made says whether it made the CA.
func Open(dir string) (ca *CA, made bool, err error) {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, false, fmt.Errorf("making %s: %w", dir, err)
	}
	ca = &CA{Dir: dir}
	crtPath, keyPath := ca.paths("ca")
	crtOK, keyOK := exists(crtPath), exists(keyPath)
	switch {
	case crtOK && keyOK:
		if ca.key, err = readKey(keyPath); err != nil {
			return nil, false, err
		}
		if ca.cert, err = readCert(crtPath); err != nil {
			return nil, false, err
		}
		if !ca.cert.IsCA || !samePublic(ca.cert.PublicKey, ca.key.Public()) {
			return nil, false, fmt.Errorf("%s is not the CA certificate of %s", crtPath, keyPath)
		}
		return ca, false, nil
	case crtOK || keyOK:
		return nil, false, fmt.Errorf("%s has only one of ca.crt and ca.key; restore the other (or remove DIR to start a new CA)", dir)
	}
	key, err := newKey()
	if err != nil {
		return nil, false, err
	}
	tmpl, err := template("microvm fleet CA", key.Public())
	if err != nil {
		return nil, false, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, false, fmt.Errorf("making the CA certificate: %w", err)
	}
	if ca.cert, err = x509.ParseCertificate(der); err != nil {
		return nil, false, err
	}
	ca.key = key
	if err := writeKey(keyPath, key); err != nil {
		return nil, false, err
	}
	if err := writeNew(crtPath, pemCert(der), 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// Certificate is the CA's own certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Member issues the certificate of an etcd member: server and client
// authentication, for its client and peer URLs at ips, and names if it is
// reached by name too. made says whether it wrote anything.
func (ca *CA) Member(name string, ips []netip.Addr, names []string) (made bool, err error) {
	if len(ips) == 0 && len(names) == 0 {
		return false, fmt.Errorf("etcd member %s: give its address", name)
	}
	return ca.issue(name, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, ips, names)
}

// Client issues a client certificate whose common name is name: the etcd
// user it acts as (a host's name, or "root").
func (ca *CA) Client(name string) (made bool, err error) {
	return ca.issue(name, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil)
}

func (ca *CA) issue(name string, usage []x509.ExtKeyUsage, ips []netip.Addr, names []string) (bool, error) {
	if err := CheckName(name); err != nil {
		return false, err
	}
	for _, n := range names {
		if !isDNSName(n) {
			return false, fmt.Errorf("%s: %q is not a DNS name", name, n)
		}
	}
	crtPath, keyPath := ca.paths(name)
	if exists(crtPath) {
		if !exists(keyPath) {
			return false, fmt.Errorf("%s exists without its key %s; remove it to issue it again", crtPath, keyPath)
		}
		return false, ca.check(crtPath, keyPath, name, usage, ips, names)
	}
	var key crypto.Signer
	if exists(keyPath) {
		// A key made by an earlier run that stopped before its
		// certificate: keep it, never overwrite a key.
		var err error
		if key, err = readKey(keyPath); err != nil {
			return false, err
		}
	} else {
		k, err := newKey()
		if err != nil {
			return false, err
		}
		if err := writeKey(keyPath, k); err != nil {
			return false, err
		}
		key = k
	}
	tmpl, err := template(name, key.Public())
	if err != nil {
		return false, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = usage
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().AsSlice()))
	}
	tmpl.DNSNames = names
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return false, fmt.Errorf("issuing the certificate of %s: %w", name, err)
	}
	return true, writeNew(crtPath, pemCert(der), 0o644)
}

// check refuses an existing certificate that is not what is asked: signed
// by another CA, for another key, name, use or address.
func (ca *CA) check(crtPath, keyPath, name string, usage []x509.ExtKeyUsage, ips []netip.Addr, names []string) error {
	cert, err := readCert(crtPath)
	if err != nil {
		return err
	}
	key, err := readKey(keyPath)
	if err != nil {
		return err
	}
	redo := fmt.Sprintf("; remove %s (keep %s) to issue it again", crtPath, keyPath)
	if err := cert.CheckSignatureFrom(ca.cert); err != nil {
		return fmt.Errorf("%s is not signed by %s%s", crtPath, filepath.Join(ca.Dir, "ca.crt"), redo)
	}
	if !samePublic(cert.PublicKey, key.Public()) {
		return fmt.Errorf("%s is not the certificate of %s%s", crtPath, keyPath, redo)
	}
	var gotIPs []netip.Addr
	for _, ip := range cert.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		gotIPs = append(gotIPs, a.Unmap())
	}
	var wantIPs []netip.Addr
	for _, ip := range ips {
		wantIPs = append(wantIPs, ip.Unmap())
	}
	slices.SortFunc(gotIPs, netip.Addr.Compare)
	slices.SortFunc(wantIPs, netip.Addr.Compare)
	switch {
	case cert.Subject.CommonName != name:
		return fmt.Errorf("%s is for %q, not %q%s", crtPath, cert.Subject.CommonName, name, redo)
	case !slices.Equal(cert.ExtKeyUsage, usage):
		return fmt.Errorf("%s is for %s, not %s%s", crtPath, usageString(cert.ExtKeyUsage), usageString(usage), redo)
	case !slices.Equal(gotIPs, wantIPs):
		return fmt.Errorf("%s is for the addresses %v, not %v%s", crtPath, gotIPs, wantIPs, redo)
	case !slices.Equal(sorted(cert.DNSNames), sorted(names)):
		return fmt.Errorf("%s is for the names %v, not %v%s", crtPath, cert.DNSNames, names, redo)
	}
	return nil
}

// CheckName refuses a name that is no host or member name: it names files
// in the directory ("ca" is the CA's) and is etcd's user.
func CheckName(name string) error {
	ok := name != "" && len(name) <= 63 && name[0] >= 'a' && name[0] <= 'z' && name[len(name)-1] != '-'
	for _, c := range name {
		ok = ok && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-')
	}
	if !ok {
		return fmt.Errorf("%q is not a valid name: use lowercase letters, digits and '-', starting with a letter", name)
	}
	if name == "ca" {
		return fmt.Errorf(`"ca" names the CA's own files; choose another name`)
	}
	return nil
}

func (ca *CA) paths(name string) (crt, key string) {
	return filepath.Join(ca.Dir, name+".crt"), filepath.Join(ca.Dir, name+".key")
}

func template(cn string, pub crypto.PublicKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("making a serial number: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	id := sha1.Sum(der)
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour), // clocks of a fleet differ a little
		NotAfter:     now.Add(Validity),
		SubjectKeyId: id[:],
	}, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("making a key: %w", err)
	}
	return k, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding a key: %w", err)
	}
	return writeNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func readKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s holds no PEM key", path)
	}
	var k any
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		err = fmt.Errorf("a %s block", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("reading key %s: a %T cannot sign", path, k)
	}
	return s, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", path, err)
	}
	return c, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeNew writes path with mode, whole or not at all, and never over an
// existing file: a temporary file linked into place, which fails if path
// exists.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".new-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Link(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func samePublic(a, b crypto.PublicKey) bool {
	ea, err1 := x509.MarshalPKIXPublicKey(a)
	eb, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(ea, eb)
}

func isDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return s[0] != '.' && s[0] != '-'
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func usageString(u []x509.ExtKeyUsage) string {
	if slices.Contains(u, x509.ExtKeyUsageServerAuth) {
		return "an etcd member (server and client)"
	}
	return "a client"
}
