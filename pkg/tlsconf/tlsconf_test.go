package tlsconf

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestEnsureLocalCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	ca, err := EnsureLocalCA(dir, []string{"localhost", "127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(ca.Made) != 4 {
		t.Fatalf("made %v, want the CA, its key, the certificate and its key", ca.Made)
	}
	for name, mode := range map[string]os.FileMode{CAFile: 0o644, CAKeyFile: 0o600, ServerFile: 0o644, ServerKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", name, err, fi.Mode().Perm(), mode)
		}
	}
	certs, err := Load(ca.Files)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := LoadPool(ca.CA)
	if err != nil {
		t.Fatal(err)
	}
	leaf := certs.Leaf()
	for _, host := range []string{"localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if leaf.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("server key %v, want ECDSA", leaf.PublicKeyAlgorithm)
	}

	again, err := EnsureLocalCA(dir, []string{"localhost"}, now)
	if err != nil || len(again.Made) != 0 {
		t.Fatalf("second call made %v: %v", again.Made, err)
	}
	caBefore, _ := os.ReadFile(ca.CA)
	more, err := EnsureLocalCA(dir, []string{"localhost", "gw.example.net"}, now)
	if err != nil || !slices.Equal(more.Made, []string{ca.Files.Cert, ca.Files.Key}) {
		t.Fatalf("a new host: made %v, %v; want a new server certificate only", more.Made, err)
	}
	if caAfter, _ := os.ReadFile(ca.CA); !bytes.Equal(caBefore, caAfter) {
		t.Error("a new host made a new CA")
	}
	if later, err := EnsureLocalCA(dir, []string{"localhost"}, now.Add(serverValidity-serverRenewal/2)); err != nil || len(later.Made) != 2 {
		t.Errorf("a certificate about to expire is not made again: %v %v", later.Made, err)
	}
}

func TestKeyFileModeRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := EnsureLocalCA(dir, DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ca.Files.Key, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ca.Files); !errors.Is(err, ErrKeyFileMode) {
		t.Errorf("Load with a 0644 key: %v", err)
	}
	if _, err := EnsureLocalCA(dir, DefaultHosts, time.Now()); !errors.Is(err, ErrKeyFileMode) {
		t.Errorf("EnsureLocalCA with a 0644 key: %v", err)
	}
}

func TestServerConfigPolicy(t *testing.T) {
	t.Parallel()
	ca, err := EnsureLocalCA(t.TempDir(), DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := Load(ca.Files)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	trust, err := ClientConfig(ca.CA)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*tls.Config)
		ok   bool
	}{
		{"TLS 1.3", func(*tls.Config) {}, true},
		{"TLS 1.2 AEAD", func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }, true},
		{"TLS 1.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 }, false},
		{"TLS 1.2 CBC", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
		}, false},
		{"another host name", func(c *tls.Config) { c.ServerName = "elsewhere.example" }, false},
	} {
		cfg := trust.Clone()
		cfg.MinVersion = 0
		tc.mod(cfg)
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err == nil {
			c.Close()
		}
	}
}

func TestPlaintextRule(t *testing.T) {
	t.Parallel()
	for addr, loop := range map[string]bool{
		"127.0.0.1:1883": true, "[::1]:1883": true, "localhost:8080": true, "127.1.2.3:0": true,
		":1883": false, "0.0.0.0:1883": false, "[::]:1883": false, "10.0.0.1:1883": false, "broker:1883": false,
	} {
		if got := Loopback(addr); got != loop {
			t.Errorf("Loopback(%q) = %v", addr, got)
		}
		err := CheckPlaintext("mqtt_addr", addr, false)
		if (err == nil) != loop || (err != nil && !errors.Is(err, ErrPlaintext)) {
			t.Errorf("CheckPlaintext(%q): %v", addr, err)
		}
		if err := CheckPlaintext("mqtt_addr", addr, true); err != nil {
			t.Errorf("allowed %q: %v", addr, err)
		}
	}
}

func TestHosts(t *testing.T) {
	t.Parallel()
	got := Hosts([]string{"gw.example.net", "LOCALHOST"}, "0.0.0.0:8883", "10.1.2.3:8443", "gw.example.net:1", "[::]:1")
	want := []string{"localhost", "127.0.0.1", "::1", "gw.example.net", "10.1.2.3"}
	if !slices.Equal(got, want) {
		t.Errorf("Hosts = %v, want %v", got, want)
	}
}

// A client CA makes the listener request client certificates, not require them: a client
// without one still connects (it authenticates with its token inside MQTT or HTTP).
func TestClientCARequestedNotRequired(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := EnsureLocalCA(dir, DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	files := ca.Files
	files.ClientCA = ca.CA
	certs, err := Load(files)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := certs.ServerConfig().GetConfigForClient(nil)
	if cfg.ClientAuth != tls.VerifyClientCertIfGiven || cfg.ClientCAs == nil {
		t.Fatalf("client auth %v, pool %v", cfg.ClientAuth, cfg.ClientCAs)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	trust, _ := ClientConfig(ca.CA)
	c, err := tls.Dial("tcp", ln.Addr().String(), trust)
	if err != nil {
		t.Fatalf("a client without a certificate: %v", err)
	}
	c.Close()
	files.ClientCA = filepath.Join(dir, "absent.pem")
	if _, err := Load(files); err == nil {
		t.Error("a missing client CA file was not an error")
	}
}
