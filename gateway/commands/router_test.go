package commands

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// TestSubmitWhileClosing: requests submitted while the router closes, and after, never panic
// and are never lost: each gets exactly one terminal reply, either its decision (the request
// was queued and decided: here signature_invalid, echoing its id) or the refusal Submit
// documents for a closing router (rejected, internal), and each Submit's channel is closed.
// Run it with -race.
func TestSubmitWhileClosing(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			st, err := store.Open(filepath.Join(t.TempDir(), "g.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			lg, err := audit.Open(st.KV())
			if err != nil {
				t.Fatal(err)
			}
			gw, err := sign.Generate()
			if err != nil {
				t.Fatal(err)
			}
			bus := &replies{}
			// One short queue: submitters wait for room in it while Close begins. No rate
			// limit: every request is judged on its own.
			cfg := Config{Shards: 1, QueueDepth: 1, ResultGrace: time.Second}
			r, err := New(cfg, st, lg, bus, noKeys{gw}, nil, nil, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}

			const submitters, each = 4, 20
			request := func(id string) []byte {
				now := time.Now().UnixMilli()
				cmd, _ := json.Marshal(protocol.Command{V: 1, ID: id, VIN: "1HGCM82633A004352", Action: "unlock",
					IssuedAtMs: now, ExpiresAtMs: now + 30_000})
				b, _ := json.Marshal(protocol.AppRequest{V: 1, Command: protocol.Envelope{Doc: protocol.EncodeB64(cmd), Sig: "AA", KID: "k"}})
				return b
			}
			var wg sync.WaitGroup
			dones := make(chan (<-chan struct{}), submitters*each+1)
			started := make(chan struct{}, submitters)
			for g := range submitters {
				wg.Go(func() {
					started <- struct{}{}
					for i := range each {
						dones <- r.Submit(fmt.Sprintf("user%d", g), "s", request(fmt.Sprintf("c-%d-%d", g, i)))
					}
				})
			}
			for range submitters {
				<-started
			}
			// Close once the router has decided a few, while the rest are queued or waiting.
			testutil.EventuallyTrue(t, 30*time.Second, func() bool {
				bus.mu.Lock()
				defer bus.mu.Unlock()
				return len(bus.got) >= 3
			})
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			dones <- r.Submit("late", "s", request("c-late")) // after Close
			close(dones)
			for done := range dones {
				select {
				case <-done:
				case <-time.After(30 * time.Second):
					t.Fatal("a submitted request was never answered")
				}
			}

			bus.mu.Lock()
			defer bus.mu.Unlock()
			if len(bus.got) != submitters*each+1 {
				t.Fatalf("%d replies to %d requests", len(bus.got), submitters*each+1)
			}
			decided, refused := map[string]bool{}, 0
			for _, rep := range bus.got {
				switch {
				case !protocol.Terminal(rep.Status):
					t.Fatalf("reply %+v is not terminal", rep)
				case rep.ID == "" && rep.Status == protocol.ReplyRejected && rep.Reason == protocol.ReasonInternal:
					refused++ // the router was closing
				case rep.ID != "" && rep.Status == protocol.ReplyRejected && rep.Reason == protocol.ReasonSignatureInvalid:
					if decided[rep.ID] {
						t.Fatalf("two replies to %s", rep.ID)
					}
					decided[rep.ID] = true
				default:
					t.Fatalf("unexpected reply %+v", rep)
				}
			}
			if len(decided) < 3 {
				t.Fatalf("%d requests decided before Close, want at least 3", len(decided))
			}
			if decided["c-late"] {
				t.Fatal("a request submitted after Close was decided")
			}
			if refused == 0 {
				t.Fatal("the request submitted after Close was not refused")
			}
			t.Logf("%d decided, %d refused for the closing router", len(decided), refused)
		})
	}
}
