package broker

import (
	"encoding/json"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
)

// A car's "offline" will is dated when the broker publishes it (the car vanished then), not
// when the car connected, so the gateway's twin, which keeps the newest status, takes it over
// the car's later "online". When the car's own new connection takes the session over, the old
// connection's will keeps its connect-time date: older than the new "online", so ignored.
func TestStatusWillIsDatedWhenPublished(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	wills := make(chan protocol.VehicleStatus, 4)
	if err := f.b.Server().Subscribe("v/+/status", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var st protocol.VehicleStatus
		if err := json.Unmarshal(pk.Payload, &st); err != nil {
			t.Errorf("status payload %q: %v", pk.Payload, err)
		}
		wills <- st
	}); err != nil {
		t.Fatal(err)
	}
	const connectedAt = int64(1_700_000_000_000)
	will := &packets.Packet{TopicName: "v/" + vinA + "/status",
		Payload: []byte(`{"v":1,"status":"offline","ts":1700000000000}`)}
	connect := func() net.Conn {
		t.Helper()
		conn, err := net.DialTimeout("tcp", f.b.MQTTAddr(), waitFor)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		car := f.creds(t, vinA, protocol.RoleVehicle, "") // a fresh token at the test clock's time
		if code, err := rawConnectWill(conn, protocolV3, car, will); err != nil || code != connAccepted {
			t.Fatalf("connect: %#x %v", code, err)
		}
		return conn
	}
	next := func() protocol.VehicleStatus {
		t.Helper()
		select {
		case st := <-wills:
			return st
		case <-time.After(waitFor):
			t.Fatal("no will published")
			return protocol.VehicleStatus{}
		}
	}

	// The car vanishes an hour after it connected (its connection closes without DISCONNECT).
	conn := connect()
	f.clock.Advance(time.Hour)
	goneAt := f.clock.Now().UnixMilli()
	conn.Close()
	if st := next(); st.Status != protocol.StatusOffline || st.TsMs != goneAt {
		t.Fatalf("will %+v, want offline dated %d (when the car vanished), not %d", st, goneAt, connectedAt)
	}

	// The car reconnects while the broker still holds its old connection: a takeover.
	connect()
	f.clock.Advance(time.Minute)
	connect()
	if st := next(); st.Status != protocol.StatusOffline || st.TsMs != connectedAt {
		t.Fatalf("will of the taken-over connection %+v, want its connect-time date %d", st, connectedAt)
	}
}
