package appcmd

import (
	"strings"
	"testing"
)

// TestSendLinkOffIsTheOneSpelling: off is the one spelling of "no local link" (the cloud only,
// as for the gateway's and the broker's listeners); an empty --link is refused, saying to
// write off, where it used to mean the default address.
func TestSendLinkOffIsTheOneSpelling(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	p.createKey()
	p.login("http://127.0.0.1:1", "tcp://127.0.0.1:1")
	if code, _, errs := p.run("send", vin, "unlock", "--link", ""); code != 2 || !strings.Contains(errs, "write off") {
		t.Fatalf("--link \"\": exit %d, stderr %s", code, errs)
	}
	if code, _, errs := p.run("send", vin, "unlock", "--local", "--link", "off"); code != 2 || !strings.Contains(errs, "--link off") {
		t.Fatalf("--local --link off: exit %d, stderr %s", code, errs)
	}
	// --link off is --cloud-only: the unreachable cloud is the answer, with no local fallback.
	code, out, errs := p.run("send", vin, "unlock", "--link", "off", "--cloud-timeout", "50ms")
	if code != 1 || strings.Contains(out, "path: local") || strings.Contains(errs, "local link") {
		t.Fatalf("--link off: exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
}
