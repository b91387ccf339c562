package fleet

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Certs is a directory of the fleet's certificates, as fleet init writes
// them: ca.crt (the CA every member and client trusts) and NAME.crt,
// NAME.key (the client certificate of a host, or of "root", the admin).
type Certs struct {
	Dir  string
	Name string // the host's name, or "root" for the admin
}

// CA, Cert and Key are the paths of the files.
func (c Certs) CA() string   { return filepath.Join(c.Dir, "ca.crt") }
func (c Certs) Cert() string { return filepath.Join(c.Dir, c.Name+".crt") }
func (c Certs) Key() string  { return filepath.Join(c.Dir, c.Name+".key") }

// TLS is the client configuration: etcd's CA only, and the client's own
// certificate, whose common name etcd takes as the user (RBAC).
func (c Certs) TLS() (*tls.Config, error) {
	pem, err := os.ReadFile(c.CA())
	if err != nil {
		return nil, fmt.Errorf("reading the fleet's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.CA())
	}
	cert, err := tls.LoadX509KeyPair(c.Cert(), c.Key())
	if err != nil {
		return nil, fmt.Errorf("reading the certificate of %s: %w", c.Name, err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Connect opens a client to etcd at endpoints with c's certificate.
// It does not wait for etcd: the first request does.
func Connect(endpoints []string, c Certs) (*clientv3.Client, error) {
	tc, err := c.TLS()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tc,
		DialTimeout: 5 * time.Second,
		// Fail a request on a dead connection in seconds, not minutes: a
		// host must notice it lost etcd and say so.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		// The client's own log (retries, reconnections) is not the
		// user's: errors reach them through the calls that fail.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %v: %w", endpoints, err)
	}
	return cli, nil
}
