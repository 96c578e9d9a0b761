package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"telematics/gateway/httpapi"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// FuzzHTTPRequest posts arbitrary bodies to every endpoint a stranger or an app user can reach,
// on a running gateway: it never answers 5xx, and every refusal is JSON with a reason from
// the closed list and the HTTP status of that reason.
func FuzzHTTPRequest(f *testing.F) {
	g := startGateway(f, f.TempDir(), nil)
	vin := provision(f, g, 1)[0].VIN
	addUser(f, g, "alice", vin, protocol.RoleOwner)
	addUser(f, g, "bob", "", "")
	sess, err := phone.Login(context.Background(), g.HTTPURL(), "alice", password, "")
	if err != nil {
		f.Fatal(err)
	}
	key, _ := sign.Generate()
	pub, _ := sign.EncodePublic(key.Public())
	paired, err := phone.PairKey(context.Background(), sess, key, vin, "phone", "")
	if err != nil {
		f.Fatal(err)
	}
	other, _ := sign.Generate()
	otherPub, _ := sign.EncodePublic(other.Public())

	endpoints := []struct {
		path   string
		bearer string
	}{
		{"/v1/login", ""},
		{"/v1/keys/pair", sess.Token},
		{"/v1/keys/share", sess.Token},
		{"/v1/keys/revoke", sess.Token},
		{"/v1/2fa/enroll", sess.Token},
		{"/v1/2fa/confirm", sess.Token},
		{"/v1/2fa/disable", sess.Token},
		{"/v1/keys/pair", ""}, // no token: a stranger
		{"/v1/keys/share", "not-a-token"},
	}
	mustJSON := func(v any) []byte {
		b, _ := json.Marshal(v)
		return b
	}
	seeds := [][]byte{
		mustJSON(api.LoginRequest{Username: "alice", Password: password}),
		mustJSON(map[string]string{"vin": vin, "public_key": otherPub, "label": "second phone"}),
		mustJSON(map[string]any{"vin": vin, "user": "bob", "role": "driver", "channels": []string{"cloud"}}),
		mustJSON(map[string]any{"vin": vin, "key_id": "unknown", "allow_last_owner": false}),
		[]byte(`{}`),
		[]byte(`{"code":"123456"}`),
		[]byte(`{"code":"123456","proof":"x"}`),
		mustJSON(map[string]string{"vin": vin, "public_key": pub}),
		[]byte(`{"vin":"` + vin + `"}`),
	}
	for i, b := range seeds {
		f.Add(uint8(i), b)
	}
	f.Add(uint8(0), mustJSON(api.LoginRequest{Username: "alice", Password: "wrong"}))
	f.Add(uint8(3), mustJSON(map[string]any{"vin": vin, "key_id": paired.ID}))
	client := &http.Client{Timeout: 30 * time.Second}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		ep := endpoints[int(which)%len(endpoints)]
		req, err := http.NewRequest(http.MethodPost, g.HTTPURL()+ep.path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if ep.bearer != "" {
			req.Header.Set("Authorization", "Bearer "+ep.bearer)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", ep.path, err)
		}
		out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode >= 500 {
			t.Fatalf("POST %s %q: %d %s", ep.path, body, resp.StatusCode, out)
		}
		if resp.StatusCode < 400 {
			if !json.Valid(out) {
				t.Fatalf("POST %s: %d with %q", ep.path, resp.StatusCode, out)
			}
			return
		}
		var e struct {
			Error protocol.Reason `json:"error"`
		}
		if err := json.Unmarshal(out, &e); err != nil || !e.Error.Valid() || e.Error == protocol.ReasonInternal {
			t.Fatalf("POST %s %q: %d %q", ep.path, body, resp.StatusCode, out)
		}
		if httpapi.StatusOf(e.Error) != resp.StatusCode {
			t.Fatalf("POST %s: %s with status %d", ep.path, e.Error, resp.StatusCode)
		}
	})
}
