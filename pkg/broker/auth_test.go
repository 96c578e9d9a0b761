package broker

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// Protocol levels in CONNECT, and codes as clients see them.
const (
	protocolV3     = 4    // MQTT 3.1.1
	protocolV5     = 5    // MQTT 5
	connAccepted   = 0x00 // CONNACK
	connRefusedV3  = 0x05 // CONNACK, MQTT 3.1.1 "not authorized"
	connRefusedV5  = 0x87 // CONNACK, MQTT 5 "not authorized"
	connQuotaV5    = 0x97 // CONNACK, MQTT 5 "quota exceeded"
	subRefused     = 0x80 // SUBACK failure, MQTT 3.1.1
	subGrantedQoS1 = 0x01 // SUBACK
)

// tamperedPosition is a character inside a token's signature, counted from the end.
const tamperedPosition = 20

func TestAuthConnect(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)

	other, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	otherTok, _, err := token.NewIssuer(other, f.clock).Issue(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	past := clocktest.New(f.clock.Now().Add(-2 * time.Hour))
	expiredTok, _, err := token.NewIssuer(f.signer, past).Issue(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	carTok := f.token(t, vinA, protocol.RoleVehicle)
	tampered := []byte(carTok)
	i := len(tampered) - tamperedPosition
	if tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	appTok := f.token(t, userX, protocol.RoleApp)
	gwTok := f.token(t, gwSub, protocol.RoleGateway)

	willStatus := &packets.Packet{TopicName: "v/" + vinA + "/status", Payload: []byte("offline")}
	willOther := &packets.Packet{TopicName: "v/" + vinB + "/cmd", Payload: []byte("unlock")}

	cases := []struct {
		name string
		c    creds
		will *packets.Packet
		ok   bool
	}{
		{"anonymous", creds{clientID: vinA}, nil, false},
		{"username without password", creds{clientID: vinA, username: vinA}, nil, false},
		{"wrong password", creds{vinA, vinA, "not-a-token"}, nil, false},
		{"token signed by another key", creds{vinA, vinA, otherTok}, nil, false},
		{"expired token", creds{vinA, vinA, expiredTok}, nil, false},
		{"tampered token", creds{vinA, vinA, string(tampered)}, nil, false},
		{"username is not the token's sub", creds{vinA, vinB, carTok}, nil, false},
		{"vehicle with client id of another VIN", creds{vinB, vinA, carTok}, nil, false},
		{"vehicle with client id VIN-suffix", creds{vinA + "-1", vinA, carTok}, nil, false},
		{"vehicle with empty client id", creds{"", vinA, carTok}, nil, false},
		{"vehicle whose sub is no VIN", creds{"car1", "car1", f.token(t, "car1", protocol.RoleVehicle)}, nil, false},
		{"vehicle", creds{vinA, vinA, carTok}, nil, true},
		{"vehicle with its own will", creds{vinA, vinA, carTok}, willStatus, true},
		{"vehicle with a will on another car's topic", creds{vinA, vinA, carTok}, willOther, false},
		{"app with client id = user", creds{userX, userX, appTok}, nil, false},
		{"app with client id not starting user-", creds{"phone-" + userX, userX, appTok}, nil, false},
		{"app with client id userx-", creds{userX + "x-1", userX, appTok}, nil, false},
		{"app with another user's client id", creds{userY + "-1", userX, appTok}, nil, false},
		{"app whose sub is no user name", creds{"Bad-1", "Bad", f.token(t, "Bad", protocol.RoleApp)}, nil, false},
		{"app whose sub is reserved", creds{"admin-1", "admin", f.token(t, "admin", protocol.RoleApp)}, nil, false},
		{"app", creds{userX + "-phone1", userX, appTok}, nil, true},
		{"app posing as vehicle", creds{vinA, userX, appTok}, nil, false},
		{"gateway, client id = sub", creds{gwSub, gwSub, gwTok}, nil, true},
		{"gateway, client id sub-suffix", creds{gwSub + "-2", gwSub, gwTok}, nil, true},
		{"gateway, client id subsuffix", creds{gwSub + "x", gwSub, gwTok}, nil, false},
		{"gateway taking a car's client id", creds{vinA, gwSub, gwTok}, nil, false},
		{"gateway named inline (the inline client's id)", creds{"inline", "inline", f.token(t, "inline", protocol.RoleGateway)}, nil, false},
		{"admin", creds{admSub + "-cli", admSub, f.token(t, admSub, protocol.RoleAdmin)}, nil, true},
	}
	for _, c := range cases {
		for _, version := range []byte{protocolV3, protocolV5} {
			t.Run(fmt.Sprintf("%s/v%d", c.name, version), func(t *testing.T) {
				code, err := rawConnect(f.b.MQTTAddr(), version, c.c, c.will)
				if err != nil {
					t.Fatal(err)
				}
				want := byte(connAccepted)
				switch {
				case c.ok:
				case version == protocolV5:
					want = connRefusedV5
				default:
					want = connRefusedV3
				}
				if code != want {
					t.Errorf("CONNACK code %#x, want %#x", code, want)
				}
			})
		}
	}

	// Every connection above has ended: the broker remembers nobody.
	testutil.Eventually(t, waitFor, func() error {
		if n := f.b.Auth().Sessions(); n != 0 {
			return fmt.Errorf("%d identities remembered", n)
		}
		return nil
	})
}

// TestAuthRefusalWithPaho checks what a refused paho client reports.
func TestAuthRefusalWithPaho(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	_, err := dialPaho(t, f.tcpURL(), creds{clientID: vinA}, nil)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "not authori") {
		t.Fatalf("anonymous paho connect: %v, want not authorized", err)
	}
}

func TestConnsPerIdentity(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.MaxConnsPerIdentity = 2 })
	tok := f.token(t, userX, protocol.RoleApp)
	c := func(suffix string) creds { return creds{userX + "-" + suffix, userX, tok} }

	one := mustPaho(t, f.tcpURL(), c("1"), nil)
	two := mustPaho(t, f.tcpURL(), c("2"), nil)

	for _, version := range []byte{protocolV3, protocolV5} {
		want := byte(connRefusedV3)
		if version == protocolV5 {
			want = connQuotaV5
		}
		if code, err := rawConnect(f.b.MQTTAddr(), version, c("3"), nil); err != nil || code != want {
			t.Fatalf("third session (v%d): code %#x, %v; want %#x", version, code, err, want)
		}
	}
	// Another user is not affected.
	mustPaho(t, f.tcpURL(), f.creds(t, userY, protocol.RoleApp, "1"), nil)

	// Connecting with a live session's client id takes that session over, so it does not
	// count against the limit: a phone reconnecting over a half-open connection gets in.
	takeover := mustPaho(t, f.tcpURL(), c("2"), nil)
	if !takeover.IsConnected() {
		t.Fatal("takeover of a live session refused")
	}
	testutil.Eventually(t, waitFor, func() error {
		if two.IsConnectionOpen() {
			return errors.New("the taken-over session is still open")
		}
		return nil
	})

	// Once a session ends, a new one fits.
	one.Disconnect(0)
	testutil.Eventually(t, waitFor, func() error {
		code, err := rawConnect(f.b.MQTTAddr(), protocolV3, c("3"), nil)
		if err != nil {
			return err
		}
		if code != connAccepted {
			return fmt.Errorf("code %#x", code)
		}
		return nil
	})
}

// TestTakeoverKeepsOneIdentity: a car that reconnects takes its session over; the broker then
// knows one identity for it, the new connection's.
func TestTakeoverKeepsOneIdentity(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	first := mustPaho(t, f.tcpURL(), car, nil)
	second := mustPaho(t, f.tcpURL(), car, nil)
	testutil.Eventually(t, waitFor, func() error {
		if first.IsConnectionOpen() {
			return errors.New("first connection still open")
		}
		if n := f.b.Auth().Sessions(); n != 1 {
			return fmt.Errorf("%d identities, want 1", n)
		}
		return nil
	})
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var rec recorder
	if code := subscribe(t, gw, "v/+/telemetry", rec.handle); code != subGrantedQoS1 {
		t.Fatalf("gateway subscribe: %#x", code)
	}
	publish(t, second, "v/"+vinA+"/telemetry", 1, "after takeover")
	testutil.Eventually(t, waitFor, func() error {
		if !rec.has("v/" + vinA + "/telemetry after takeover") {
			return errors.New("telemetry not delivered")
		}
		return nil
	})
}

// TestSweepForgetsClosedClients: mochi skips OnDisconnect when writing the CONNACK fails; the
// periodic sweep forgets such clients, and leaves live ones alone.
func TestSweepForgetsClosedClients(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.MQTTAddr, c.WSAddr = "", "" })
	auth := f.b.Auth()
	exp := f.clock.Now().Add(time.Hour)
	newClient := func(id string) *mqtt.Client {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return f.b.Server().NewClient(a, ListenerTCP, id, false)
	}
	dead, live := newClient(userX+"-dead"), newClient(userX+"-live")
	for _, cl := range []*mqtt.Client{dead, live} {
		if err := auth.add(cl, Identity{Role: protocol.RoleApp, Subject: userX, ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
	}
	dead.Stop(nil)
	f.clock.Advance(sweepInterval) // mochi's event loop may sweep now too; either sweep will do
	auth.OnSysInfoTick(nil)
	if n := auth.Sessions(); n != 1 {
		t.Fatalf("%d identities after the sweep, want 1", n)
	}
	if _, ok := auth.Identity(live); !ok {
		t.Fatal("live client forgotten")
	}
	auth.remove(live)
	if n, apps := auth.Sessions(), len(auth.apps); n != 0 || apps != 0 {
		t.Fatalf("%d identities, %d app users left", n, apps)
	}
}

// TestOfflineSessionKeepsIdentity: the gateway's client that disconnects with a session the
// broker keeps (CleanSession false) keeps its identity, so the ACL admits the deliveries queued
// for it, but it may not publish, survives the sweep, and is forgotten when it connects again,
// when its session expires, or when it disconnects with a clean session. Other roles are
// forgotten at once, persistent session or not.
func TestOfflineSessionKeepsIdentity(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.MQTTAddr, c.WSAddr = "", "" })
	auth := f.b.Auth()
	acl := NewACLHook(ACL{}, auth)
	exp := f.clock.Now().Add(time.Hour)
	newClient := func(id string) *mqtt.Client {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return f.b.Server().NewClient(a, ListenerTCP, id, false)
	}
	gwID := Identity{Role: protocol.RoleGateway, Subject: gwSub, ExpiresAt: exp}
	gw := newClient(gwSub + "-1")
	app := newClient(userX + "-1")
	car := newClient(vinA)
	for cl, id := range map[*mqtt.Client]Identity{gw: gwID, app: {Role: protocol.RoleApp, Subject: userX, ExpiresAt: exp}, car: {Role: protocol.RoleVehicle, Subject: vinA, ExpiresAt: exp}} {
		if err := auth.add(cl, id); err != nil {
			t.Fatal(err)
		}
		cl.Stop(nil)
		auth.OnDisconnect(cl, nil, false)
	}
	if !acl.OnACLCheck(gw, "v/"+vinA+"/events", false) {
		t.Fatal("a queued delivery to the disconnected gateway session was denied")
	}
	if acl.OnACLCheck(gw, "v/"+vinA+"/cmd", true) {
		t.Fatal("a disconnected client may publish")
	}
	for _, cl := range []*mqtt.Client{app, car} {
		if _, ok := auth.Identity(cl); ok {
			t.Fatalf("the disconnected %s is still known", cl.ID)
		}
	}
	if len(auth.apps) != 0 {
		t.Fatal("a disconnected app session still counts as live")
	}
	f.clock.Advance(sweepInterval)
	auth.OnSysInfoTick(nil)
	if n := auth.Sessions(); n != 1 {
		t.Fatalf("%d identities after the sweep, want the gateway's kept session", n)
	}

	// The gateway connects again: one identity for its client id, the new connection's.
	gw2 := newClient(gwSub + "-1")
	if err := auth.add(gw2, gwID); err != nil {
		t.Fatal(err)
	}
	if _, ok := auth.Identity(gw); ok {
		t.Fatal("the replaced session is still known")
	}
	// A kept session that expires, and one that ends clean, are forgotten.
	gw2.Stop(nil)
	auth.OnDisconnect(gw2, nil, false)
	auth.OnClientExpired(gw2)
	gw3 := newClient(gwSub + "-1")
	if err := auth.add(gw3, gwID); err != nil {
		t.Fatal(err)
	}
	gw3.Stop(nil)
	auth.OnDisconnect(gw3, nil, true)
	if n, off := auth.Sessions(), len(auth.offline); n != 0 || off != 0 {
		t.Fatalf("%d identities, %d offline sessions left", n, off)
	}
}
