package broker

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

// dupRecorder collects payloads with their DUP flag.
type dupRecorder struct {
	mu   sync.Mutex
	msgs []string // "payload dup=BOOL"
}

func (r *dupRecorder) handle(_ paho.Client, m paho.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, fmt.Sprintf("%s dup=%v", m.Payload(), m.Duplicate()))
	r.mu.Unlock()
}

func (r *dupRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// The messages a member of a share group holds unacknowledged when its clean session ends go
// to the group's other member, each exactly once and marked DUP; what is published after
// goes to the member that is left, once.
func TestSharedMemberLeavingHandsOnUnackedMessages(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	gw := func(suffix string) creds {
		c := f.creds(t, "gateway", protocol.RoleGateway, "")
		c.clientID = "gateway-" + suffix
		return c
	}
	const filter = "$share/gateway/app/+/cmd"
	pub := mustPaho(t, f.tcpURL(), gw("pub"), nil)

	// a takes every message (it is the only member) and acknowledges none.
	var atA dupRecorder
	a := mustPaho(t, f.tcpURL(), gw("a"), func(o *paho.ClientOptions) { o.SetAutoAckDisabled(true) })
	if code := subscribe(t, a, filter, atA.handle); code != 1 {
		t.Fatalf("subscribe a: %#x", code)
	}
	const n = 10
	for i := range n {
		publish(t, pub, "app/u1/cmd", 1, fmt.Sprintf("m%d", i))
	}
	testutil.Eventually(t, waitFor, func() error {
		if got := len(atA.all()); got != n {
			return fmt.Errorf("a has %d of %d", got, n)
		}
		return nil
	})

	var atB dupRecorder
	b := mustPaho(t, f.tcpURL(), gw("b"), nil)
	if code := subscribe(t, b, filter, atB.handle); code != 1 {
		t.Fatalf("subscribe b: %#x", code)
	}
	a.Disconnect(0)

	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("m%d dup=true", i))
	}
	testutil.Eventually(t, waitFor, func() error {
		if got := atB.all(); len(got) < n {
			return fmt.Errorf("b has %d of %d: %v", len(got), n, got)
		}
		return nil
	})
	for i := range 3 {
		publish(t, pub, "app/u1/cmd", 1, fmt.Sprintf("after%d", i))
		want = append(want, fmt.Sprintf("after%d dup=false", i))
	}
	testutil.Eventually(t, waitFor, func() error {
		if got := atB.all(); len(got) < len(want) {
			return fmt.Errorf("b has %d of %d: %v", len(got), len(want), got)
		}
		return nil
	})
	got := atB.all()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("b got %v, want each of %v once", got, want)
	}
	if got := len(atA.all()); got != n {
		t.Fatalf("a got %d messages, want %d", got, n)
	}
}
