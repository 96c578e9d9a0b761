package appcmd

import (
	"strings"
	"testing"

	"telematics/internal/testutil"
	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
)

// TestSendFollowsTheMovedBroker: the session names a broker nothing answers any more (the
// gateway moved to a standalone broker after the login). `app send` asks the gateway which
// broker it uses now, sends through it, and keeps it in the session; before, it fell back to
// the local link with "broker unreachable".
func TestSendFollowsTheMovedBroker(t *testing.T) {
	t.Parallel()
	g := newGatewayStub(t)
	moved := testBroker(t, true)
	g.on("GET /v1/session", func(map[string]any) (int, any) {
		return 200, map[string]any{"user": "alice", "broker_url": moved}
	})
	p := newPhone(t)
	stale := "tcp://" + testutil.FreeAddr(t)
	p.login(g.URL, stale)
	key := p.createKey()
	link := phonetest.NewLink(t)
	p.vars["SIM_APP_GATEWAY_KEY"] = link.GatewayKey() // what a login would have taught the phone
	link.AddCar(vin, phonetest.KeyFor(key, "alice", protocol.RoleOwner))

	code, out, errs := p.run("send", vin, "unlock", "--cloud-timeout", "300ms", "--link", link.Addr())
	if code != 0 || !strings.HasPrefix(out, "path: cloud\n") || !strings.Contains(out, "unlock executed") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	if !strings.Contains(errs, "the gateway now names "+moved) || link.Requests() != 0 {
		t.Fatalf("stderr %q, local link requests %d", errs, link.Requests())
	}
	if s, err := LoadSession(p.sessionPath()); err != nil || s.BrokerURL != moved {
		t.Fatalf("session keeps %v (%v), want %s", s, err, moved)
	}
	// The next command goes straight to the new broker.
	if code, out, errs := p.run("send", vin, "lock", "--cloud-only"); code != 0 || !strings.Contains(out, "lock executed") || errs != "" {
		t.Fatalf("second send: %d %s %s", code, out, errs)
	}
}

// TestSendSaysTheBrokerMayBeStale: when the gateway answers but cannot tell its broker (an
// older gateway), the fallback to the local link says that the session's broker may be stale
// and how to fix it. When the gateway does not answer either (an outage), it says nothing of
// the kind.
func TestSendSaysTheBrokerMayBeStale(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		gateway func(t *testing.T) string
		hint    bool
	}{
		{"gateway without the endpoint", func(t *testing.T) string { return newGatewayStub(t).URL }, true},
		{"gateway down too", func(t *testing.T) string { return "http://" + testutil.FreeAddr(t) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPhone(t)
			p.login(tc.gateway(t), "tcp://"+testutil.FreeAddr(t))
			key := p.createKey()
			link := phonetest.NewLink(t)
			p.vars["SIM_APP_GATEWAY_KEY"] = link.GatewayKey() // what a login would have taught the phone
			link.AddCar(vin, phonetest.KeyFor(key, "alice", protocol.RoleOwner))
			code, out, errs := p.run("send", vin, "unlock", "--cloud-timeout", "200ms", "--link", link.Addr())
			if code != 0 || !strings.HasPrefix(out, "path: local (broker unreachable within 200ms)\n") {
				t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
			}
			hinted := strings.Contains(errs, "log in again") && strings.Contains(errs, "--broker URL")
			if hinted != tc.hint {
				t.Fatalf("stale-broker hint %v, want %v: %q", hinted, tc.hint, errs)
			}
		})
	}
}
