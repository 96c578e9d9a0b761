package appcmd

import (
	"encoding/json"
	"strings"
	"testing"

	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
)

// TestHumanAndJSONOutput: commands with machine output print for people by default and one
// JSON document with --json; totp status no longer prints raw JSON by default.
func TestHumanAndJSONOutput(t *testing.T) {
	t.Parallel()
	g := newGatewayStub(t)
	p := newPhone(t)
	p.login(g.URL, "tcp://127.0.0.1:1")
	key := p.createKey()
	g.on("GET /v1/2fa", func(map[string]any) (int, any) {
		return 200, map[string]any{"enrolled": true, "pending": false, "recovery_codes_left": 1, "mode": "required"}
	})
	g.on("POST /v1/keys/pair", func(map[string]any) (int, any) {
		return 201, phonetest.KeyFor(key, "alice", protocol.RoleOwner)
	})
	g.on("POST /v1/keys/remove-user", func(m map[string]any) (int, any) {
		return 200, map[string]any{"vin": m["vin"], "user": m["user"], "role": "none", "keys_changed": 1, "version": 3}
	})

	code, out, errs := p.run("totp", "status")
	if code != 0 || !strings.Contains(out, "two-factor authentication: active, 1 recovery code left") ||
		!strings.Contains(out, "gateway policy: required") || strings.Contains(out, "{") {
		t.Fatalf("totp status: %d %q %q", code, out, errs)
	}
	code, out, _ = p.run("totp", "status", "--json")
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st["enrolled"] != true {
		t.Fatalf("totp status --json: %d %q %v", code, out, err)
	}
	code, out, _ = p.run("key", "pair", vin, "--json")
	var k protocol.WhitelistKey
	if err := json.Unmarshal([]byte(out), &k); code != 0 || err != nil || k.ID != key.KID() {
		t.Fatalf("key pair --json: %d %q %v", code, out, err)
	}
	// One key is "1 key".
	if code, out, _ = p.run("key", "remove-user", vin, "bob"); code != 0 || !strings.Contains(out, "1 key revoked") {
		t.Fatalf("remove-user: %d %q", code, out)
	}
	// A flag's variable: SIM_APP_JSON as --json.
	p.vars["SIM_APP_JSON"] = "true"
	if code, out, _ = p.run("totp", "status"); code != 0 || !strings.HasPrefix(strings.TrimSpace(out), "{") {
		t.Fatalf("SIM_APP_JSON: %d %q", code, out)
	}
}
