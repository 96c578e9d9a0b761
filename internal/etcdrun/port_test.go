package etcdrun

import (
	"net"
	"net/url"
	"path/filepath"
	"testing"
)

// A member whose client port another process holds fails with an error portInUse recognises,
// which is what makes Start plan the cluster again on other ports.
func TestPortTakenIsRecognised(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := FreeURL()
	if err != nil {
		t.Fatal(err)
	}
	taken := url.URL{Scheme: "http", Host: l.Addr().String()}
	p := memberPlan{name: "m0", dir: filepath.Join(t.TempDir(), "m0"), peer: peer, client: taken, initial: "m0=" + peer.String()}
	e, err := startEmbeddedMember(Options{NoFsync: true}, p)
	if err == nil {
		e.Close()
		t.Fatal("a member started on a port another listener holds")
	}
	if !portInUse(err) {
		t.Fatalf("portInUse(%v) = false, want true", err)
	}
}
