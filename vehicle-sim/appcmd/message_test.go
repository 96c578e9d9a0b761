package appcmd

import (
	"encoding/json"
	"strings"
	"testing"

	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
)

// TestSendShowsTheCarsMessage: a refusal for the car's state prints the car's message beside
// the reason (forbidden alone reads as a role problem), and --json keeps it in "message".
func TestSendShowsTheCarsMessage(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	key := p.createKey()
	link := phonetest.NewLink(t)
	p.vars["SIM_APP_GATEWAY_KEY"] = link.GatewayKey() // what a login would have taught the phone
	link.AddCar(vin, phonetest.KeyFor(key, "alice", protocol.RoleOwner))
	const msg = "the trunk cannot open while the car moves"
	link.RefuseForState(protocol.ActionOpenTrunk, msg)

	code, out, errs := p.run("send", vin, "open_trunk", "--local", "--link", link.Addr(), "--user", "alice")
	if code != 1 || !strings.Contains(out, "open_trunk rejected: forbidden: "+msg) {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	code, out, _ = p.run("send", vin, "open_trunk", "--local", "--link", link.Addr(), "--user", "alice", "--json")
	var r protocol.Reply
	if err := json.Unmarshal([]byte(out), &r); code != 1 || err != nil || r.Reason != protocol.ReasonForbidden || r.Message != msg {
		t.Fatalf("exit %d, stdout %s (%v)", code, out, err)
	}
	// The link is not checked by the gateway: what it says reaches the terminal printable only.
	link.RefuseForState(protocol.ActionHonk, "no\x1b[2J horn\nhere")
	code, out, _ = p.run("send", vin, "honk", "--local", "--link", link.Addr(), "--user", "alice")
	if code != 1 || !strings.Contains(out, "honk rejected: forbidden: no[2J hornhere\n") {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
}
