package commands

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// replies is a bus that keeps the replies the router publishes.
type replies struct {
	mu  sync.Mutex
	got []protocol.Reply
}

func (r *replies) Publish(_ context.Context, topic string, _ byte, _ bool, p []byte) error {
	var rep protocol.Reply
	if err := json.Unmarshal(p, &rep); err != nil {
		return err
	}
	r.mu.Lock()
	r.got = append(r.got, rep)
	r.mu.Unlock()
	return nil
}
func (r *replies) Subscribe(context.Context, string, byte, mqttc.Handler) error { return nil }
func (r *replies) Connected() bool                                              { return true }
func (r *replies) Close() error                                                 { return nil }

type noKeys struct{ s *sign.Signer }

func (noKeys) Whitelist(string) *protocol.Whitelist { return nil }
func (k noKeys) GrantSigner(string) *sign.Signer    { return k.s }

// FuzzAppRequest: whatever bytes an app publishes, the gateway answers exactly one terminal
// reply with a reason from the closed list, and never panics.
func FuzzAppRequest(f *testing.F) {
	st, err := store.Open(filepath.Join(f.TempDir(), "g.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	lg, _ := audit.Open(st.KV())
	gw, _ := sign.Generate()
	bus := &replies{}
	r, err := New(DefaultConfig(), st, lg, bus, noKeys{gw}, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	defer r.Close()
	now := time.Now().UnixMilli()
	cmd, _ := json.Marshal(protocol.Command{V: 1, ID: "c1", VIN: "1HGCM82633A004352", Action: "unlock", IssuedAtMs: now, ExpiresAtMs: now + 10_000})
	req, _ := json.Marshal(protocol.AppRequest{V: 1, Command: protocol.Envelope{Doc: protocol.EncodeB64(cmd), Sig: "AA", KID: "k"}})
	f.Add(req)
	f.Add([]byte(`{"v":1,"command":{"doc":"e30"}}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		bus.mu.Lock()
		bus.got = nil
		bus.mu.Unlock()
		<-r.Submit("alice", "alice-1", payload)
		bus.mu.Lock()
		defer bus.mu.Unlock()
		terminal := 0
		for _, rep := range bus.got {
			if protocol.Terminal(rep.Status) {
				terminal++
				if rep.Reason != "" && !rep.Reason.Valid() {
					t.Fatalf("reason %q not on the closed list", rep.Reason)
				}
			}
		}
		if terminal != 1 {
			t.Fatalf("%d terminal replies to %q", terminal, payload)
		}
	})
}
