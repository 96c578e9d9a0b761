package appcmd

import (
	"strings"
	"testing"

	"telematics/pkg/protocol"
)

// Issue 8, case 1, the phone's side: `key remove-user` and `key revoke --keep-share` send what
// the gateway's contract asks and say what happened to the user's share.
func TestKeyRemoveUserAndKeepShare(t *testing.T) {
	t.Parallel()
	g := newGatewayStub(t)
	p := newPhone(t)
	p.login(g.URL, "tcp://127.0.0.1:1")
	g.on("POST /v1/keys/remove-user", func(m map[string]any) (int, any) {
		return 200, map[string]any{"vin": m["vin"], "user": m["user"], "role": "none", "keys_changed": 2, "version": 9}
	})
	g.on("POST /v1/keys/revoke", func(m map[string]any) (int, any) {
		ended := m["keep_share"] != true
		return 200, map[string]any{"vin": m["vin"], "key_id": m["key_id"], "user": "bob", "version": 10, "share_ended": ended}
	})

	code, out, errs := p.run("key", "remove-user", strings.ToLower(vin), "bob", "--totp", "123456")
	reqs, bodies, _ := g.Take()
	if code != 0 || len(reqs) != 1 || reqs[0] != "POST /v1/keys/remove-user" ||
		bodies[0]["vin"] != vin || bodies[0]["user"] != "bob" || bodies[0]["totp"] != "123456" {
		t.Fatalf("remove-user: %d %v %v %s", code, reqs, bodies, errs)
	}
	if !strings.Contains(out, "bob removed from "+vin+": 2 keys revoked") || !strings.Contains(out, "acknowledges version 9") {
		t.Fatalf("remove-user output: %q", out)
	}

	code, out, _ = p.run("key", "revoke", vin, "bobkey")
	_, bodies, _ = g.Take()
	if code != 0 || bodies[0]["keep_share"] != nil || !strings.Contains(out, "it was bob's last key: their share of "+vin+" ended") {
		t.Fatalf("revoke: %d %v %q", code, bodies, out)
	}
	code, out, _ = p.run("key", "revoke", vin, "bobkey", "--keep-share")
	_, bodies, _ = g.Take()
	if code != 0 || bodies[0]["keep_share"] != true || strings.Contains(out, "share of") {
		t.Fatalf("revoke --keep-share: %d %v %q", code, bodies, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"key", "remove-user", vin}, "need VIN and USER"},
		{[]string{"key", "remove-user", "NOPE", "bob"}, "not a VIN"},
		{[]string{"key", "remove-user", vin, "Bob-X"}, "not a user name"},
	} {
		if code, _, errs := p.run(tc.args...); code != 2 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: %d %q", tc.args, code, errs)
		}
	}
	g.on("POST /v1/keys/remove-user", refusal(403, protocol.ReasonForbidden))
	if code, _, errs := p.run("key", "remove-user", vin, "alice"); code != 1 || !strings.Contains(errs, "an owner is removed by the admin") {
		t.Fatalf("refused: %d %q", code, errs)
	}
	if code, _, errs := p.run(); code != 2 || !strings.Contains(errs, "key remove-user VIN USER") || !strings.Contains(errs, "--keep-share") {
		t.Fatalf("usage: %d %q", code, errs)
	}
}
