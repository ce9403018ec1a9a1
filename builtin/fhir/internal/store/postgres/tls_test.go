package postgres

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/pgtest"
)

// newCA returns a self-signed CA and a PEM encoding of its certificate.
func newCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TLS settings reach the connections: verify-full with the CA file
// connects over TLS, a CA file alone means verify-full (a name the
// certificate does not hold is refused), another CA is refused, require
// encrypts without verifying, disable does not encrypt.
func TestTLS(t *testing.T) {
	ca, caKey, caPEM := newCA(t, "test CA")
	_, _, otherPEM := newCA(t, "another CA")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	dir := pgtest.ServerFiles(t, map[string][]byte{
		"server.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"server.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	})
	srv := pgtest.Start(t, "-c", "ssl=on", "-c", "ssl_cert_file="+filepath.Join(dir, "server.crt"),
		"-c", "ssl_key_file="+filepath.Join(dir, "server.key"))
	db := strings.TrimPrefix(strings.Split(srv.NewDatabase(t), "?")[0], fmt.Sprintf("postgres://postgres@127.0.0.1:%d/", srv.Port()))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	otherFile := filepath.Join(t.TempDir(), "other.pem")
	os.WriteFile(caFile, caPEM, 0o600)
	os.WriteFile(otherFile, otherPEM, 0o600)
	byIP := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s", srv.Port(), db)
	byName := fmt.Sprintf("postgres://postgres@localhost:%d/%s", srv.Port(), db)
	for _, c := range []struct {
		name   string
		opt    Options
		ok     bool
		secure bool
	}{
		{"verify-full with the CA", Options{URL: byIP, SSLMode: "verify-full", CAFile: caFile}, true, true},
		{"a CA file alone verifies the name", Options{URL: byName, CAFile: caFile}, false, false},
		{"a CA file alone, the right name", Options{URL: byIP, CAFile: caFile}, true, true},
		{"verify-ca with the CA ignores the name", Options{URL: byName, SSLMode: "verify-ca", CAFile: caFile}, true, true},
		{"verify-full with another CA", Options{URL: byIP, SSLMode: "verify-full", CAFile: otherFile}, false, false},
		{"sslmode in the URL", Options{URL: byIP + "?sslmode=verify-full&sslrootcert=" + caFile}, true, true},
		{"require without a CA", Options{URL: byName, SSLMode: "require"}, true, true},
		{"disable", Options{URL: byIP + "?sslmode=require", SSLMode: "disable"}, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s, err := Open(ctx, c.opt)
			if !c.ok {
				if err == nil {
					s.Close()
					t.Fatal("connected")
				}
				if !strings.Contains(err.Error(), "certificate") {
					t.Errorf("refused for another reason than the certificate: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var secure bool
			if err := s.pool.QueryRow(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&secure); err != nil {
				t.Fatal(err)
			}
			if secure != c.secure {
				t.Errorf("TLS %v, want %v", secure, c.secure)
			}
		})
	}
}
