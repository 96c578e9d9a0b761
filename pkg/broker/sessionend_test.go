package broker

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

type sessionLog struct {
	mu    sync.Mutex
	ended []string
}

func (l *sessionLog) add(user, clientID string) {
	l.mu.Lock()
	l.ended = append(l.ended, user+" "+clientID)
	l.mu.Unlock()
}

func (l *sessionLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ended)
}

// The gateway learns that an app session ended when its connection closes and when another
// connection with its client id takes it over; cars are not reported.
func TestAppSessionEndsOnDisconnect(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	var l sessionLog
	f.b.OnAppSessionEnd(l.add)

	car := mustPaho(t, f.tcpURL(), f.creds(t, "1HGCM82633A004352", protocol.RoleVehicle, ""), nil)
	app := mustPaho(t, f.tcpURL(), f.creds(t, "alice", protocol.RoleApp, "phone1"), nil)
	// Connecting reports the client id once, before the connection may be granted anything.
	testutil.Eventually(t, waitFor, func() error {
		if got := l.get(); !slices.Equal(got, []string{"alice alice-phone1"}) {
			return fmt.Errorf("ended %v", got)
		}
		return nil
	})
	app.Disconnect(50)
	car.Disconnect(50)
	testutil.Eventually(t, waitFor, func() error {
		if got := l.get(); !slices.Equal(got, []string{"alice alice-phone1", "alice alice-phone1"}) {
			return fmt.Errorf("ended %v, want alice's session reported at connect and at disconnect, the car's never", got)
		}
		return nil
	})
}
