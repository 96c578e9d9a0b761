package broker

import (
	"crypto/ecdsa"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// Fuzz targets for what a stranger's MQTT client hands the broker's hooks: CONNECT
// credentials and will, topics, and (for the standalone broker) car-token messages.

var fuzzNow = time.UnixMilli(1_800_000_000_000)

// fuzzClock stands still at fuzzNow.
var fuzzClock = clocktest.New(fuzzNow)

// FuzzConnect feeds arbitrary CONNECT credentials (client id, username, token, will topic) to
// the AuthHook's decision: no panic, a refusal carries a reason from the closed list, and an
// admitted client is the subject of a token the gateway issued, with a client id and a will
// its role allows.
func FuzzConnect(f *testing.F) {
	gw, err := sign.Generate()
	if err != nil {
		f.Fatal(err)
	}
	iss := token.NewIssuer(gw, fuzzClock)
	issued := map[string]protocol.Role{} // subject/role pairs the gateway signed
	tok := func(sub string, role protocol.Role) string {
		s, _, err := iss.Issue(sub, role, time.Hour)
		if err != nil {
			f.Fatal(err)
		}
		issued[sub+"\x00"+string(role)] = role
		return s
	}
	f.Add(vinA, vinA, tok(vinA, protocol.RoleVehicle), protocol.VehicleTopic(vinA, protocol.SuffixStatus), true)
	f.Add(userX+"-phone", userX, tok(userX, protocol.RoleApp), "", false)
	f.Add(gwSub+"-1", gwSub, tok(gwSub, protocol.RoleGateway), "v/x/status", true)
	f.Add(admSub, admSub, tok(admSub, protocol.RoleAdmin), "$SYS/x", true)
	f.Add(vinB, vinA, tok(vinA, protocol.RoleVehicle), "", false)
	f.Add("", "", "", "", false)
	acl := ACL{Clock: fuzzClock}
	h := NewAuthHook(token.NewVerifier(fuzzClock, gw.Public()), acl, 4)
	f.Fuzz(func(t *testing.T, clientID, username, password, willTopic string, will bool) {
		cl := &mqtt.Client{ID: clientID}
		pk := packets.Packet{Connect: packets.ConnectParams{
			ClientIdentifier: clientID,
			Username:         []byte(username), UsernameFlag: username != "",
			Password: []byte(password), PasswordFlag: password != "",
			WillFlag: will, WillTopic: willTopic, WillPayload: []byte(`{"v":1,"status":"offline"}`),
		}}
		id, err := h.authenticate(cl, pk)
		if err != nil {
			if r := protocol.ReasonOf(err); !r.Valid() || r == protocol.ReasonInternal {
				t.Fatalf("refusal without a reason from the closed list: %v", err)
			}
			return
		}
		if _, ok := issued[id.Subject+"\x00"+string(id.Role)]; !ok || id.Subject != username {
			t.Fatalf("admitted %+v as %q, not an identity the gateway issued", id, username)
		}
		switch id.Role {
		case protocol.RoleVehicle:
			if clientID != id.Subject {
				t.Fatalf("car %s admitted with client id %q", id.Subject, clientID)
			}
		default:
			if clientID != id.Subject && !strings.HasPrefix(clientID, id.Subject+"-") {
				t.Fatalf("%s admitted with client id %q", id.Subject, clientID)
			}
		}
		if will && !acl.Allow(id, willTopic, true) {
			t.Fatalf("%+v admitted with will topic %q", id, willTopic)
		}
	})
}

// FuzzACL feeds arbitrary topics and filters to the policy for each kind of identity: no
// panic, nothing bigger than the bound or with a NUL, and a car or app is allowed only its
// own topics, named exactly.
func FuzzACL(f *testing.F) {
	for _, s := range []string{
		protocol.VehicleTopic(vinA, protocol.SuffixTelemetry), protocol.VehicleTopic(vinA, protocol.SuffixCmd),
		protocol.VehicleTopic(vinB, protocol.SuffixCmd), protocol.AppTopic(userX, "cmd"), protocol.AppTopic(userX, "reply"),
		"v/+/result", "$share/g/v/+/result", "$SHARE//v/#", "#", "$SYS/broker/clients", "v/" + vinA + "/#", "app/+/cmd",
		"v/_tokens/+", "v/" + vinA + "/keys/ack",
	} {
		f.Add(uint8(0), s, true)
		f.Add(uint8(0), s, false)
	}
	exp := fuzzNow.Add(time.Hour)
	ids := []Identity{
		{Role: protocol.RoleVehicle, Subject: vinA, ExpiresAt: exp},
		{Role: protocol.RoleApp, Subject: userX, ExpiresAt: exp},
		{Role: protocol.RoleGateway, Subject: gwSub, ExpiresAt: exp},
		{Role: protocol.RoleAdmin, Subject: admSub, ExpiresAt: exp},
		{Role: protocol.RoleVehicle, Subject: vinA, ExpiresAt: fuzzNow}, // expired
		{Role: "unknown", Subject: userX, ExpiresAt: exp},
	}
	acl := ACL{Clock: fuzzClock}
	f.Fuzz(func(t *testing.T, who uint8, topic string, write bool) {
		id := ids[int(who)%len(ids)]
		if !acl.Allow(id, topic, write) {
			return
		}
		if len(topic) > DefaultMaxTopicBytes || strings.IndexByte(topic, 0) >= 0 || !fuzzNow.Before(id.ExpiresAt) {
			t.Fatalf("%+v allowed %q", id, topic)
		}
		switch id.Role {
		case protocol.RoleVehicle:
			vin, suffix, ok := protocol.ParseVehicleTopic(topic)
			if !ok || vin != id.Subject || strings.ContainsAny(suffix, "+#") {
				t.Fatalf("car %s allowed %q (write %v)", id.Subject, topic, write)
			}
		case protocol.RoleApp:
			user, suffix, ok := protocol.ParseAppTopic(topic)
			if !ok || user != id.Subject || strings.ContainsAny(suffix, "+#") {
				t.Fatalf("app %s allowed %q (write %v)", id.Subject, topic, write)
			}
		case protocol.RoleGateway:
			f, _ := stripShare(topic)
			if !strings.HasPrefix(f, protocol.VehiclePrefix) && !strings.HasPrefix(f, protocol.AppPrefix) {
				t.Fatalf("gateway allowed %q outside v/ and app/", topic)
			}
		case protocol.RoleAdmin:
			if write || !strings.HasPrefix(topic, "$SYS/") {
				t.Fatalf("admin allowed %q (write %v)", topic, write)
			}
		default:
			t.Fatalf("role %q allowed %q", id.Role, topic)
		}
	})
}

// FuzzCarTokenMessage feeds arbitrary messages on v/_tokens/+ to the standalone broker's
// follower: no panic, and it adopts only a car token the gateway signed, for the car its topic
// names.
func FuzzCarTokenMessage(f *testing.F) {
	gw, _ := sign.Generate()
	other, _ := sign.Generate()
	signed := map[string]protocol.CarToken{} // by jti
	seal := func(s *sign.Signer, ct protocol.CarToken) []byte {
		env, err := s.Seal(ct)
		if err != nil {
			f.Fatal(err)
		}
		if s == gw {
			signed[ct.JTI] = ct
		}
		b, _ := json.Marshal(env)
		return b
	}
	ct := protocol.CarToken{V: 1, VIN: vinA, JTI: "0f8fad5b-d9cb-469f-a165-70867728950e", IssuedAtMs: fuzzNow.UnixMilli()}
	f.Add(protocol.CarTokenPrefix+vinA, seal(gw, ct))
	f.Add(protocol.CarTokenPrefix+vinB, seal(gw, ct))
	f.Add(protocol.CarTokenPrefix+vinA, seal(other, ct))
	f.Add(protocol.CarTokenPrefix+vinA, seal(gw, protocol.CarToken{V: 1, VIN: vinA, JTI: "", IssuedAtMs: 1}))
	f.Add(protocol.CarTokenPrefix+vinA, []byte(`{"doc":"e30"}`))
	cfg := testConfig()
	b, err := newBroker(cfg, []*ecdsa.PublicKey{gw.Public()}, slog.New(slog.DiscardHandler), fuzzClock)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		tf := &tokenFollower{b: b, keys: []*ecdsa.PublicKey{gw.Public()}, current: map[string]carTokenState{}}
		tf.onCarToken(nil, packets.Subscription{}, packets.Packet{TopicName: topic, Payload: payload})
		for vin, got := range tf.current {
			want, ok := signed[got.JTI]
			if !ok || want != got.CarToken || vin != got.VIN || topic != protocol.CarTokenPrefix+vin {
				t.Fatalf("adopted %+v for %s from %q", got, vin, topic)
			}
		}
	})
}

// FuzzStatusWill feeds arbitrary wills (topic and payload a client sets at CONNECT) to the
// hook that re-dates a car's "offline" will: no panic; a will is left as it is unless it is
// the car's own offline status, which is then re-dated to now and nothing else.
func FuzzStatusWill(f *testing.F) {
	off, _ := json.Marshal(protocol.VehicleStatus{V: 1, Status: protocol.StatusOffline, TsMs: 1})
	on, _ := json.Marshal(protocol.VehicleStatus{V: 1, Status: protocol.StatusOnline, TsMs: 1})
	f.Add(protocol.VehicleTopic(vinA, protocol.SuffixStatus), off)
	f.Add(protocol.VehicleTopic(vinA, protocol.SuffixStatus), on)
	f.Add(protocol.VehicleTopic(vinB, protocol.SuffixStatus), off)
	f.Add(protocol.VehicleTopic(vinA, protocol.SuffixResult), off)
	cl := &mqtt.Client{ID: vinA}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		will := mqtt.Will{TopicName: topic, Payload: payload, Retain: true, Qos: 1}
		got := redateStatusWill(cl, will, fuzzNow)
		if got.TopicName != topic || got.Retain != will.Retain || got.Qos != will.Qos {
			t.Fatalf("will changed beyond its payload: %+v", got)
		}
		if string(got.Payload) == string(payload) {
			return
		}
		var st protocol.VehicleStatus
		if topic != protocol.VehicleTopic(vinA, protocol.SuffixStatus) || json.Unmarshal(got.Payload, &st) != nil ||
			st.Status != protocol.StatusOffline || st.TsMs != fuzzNow.UnixMilli() {
			t.Fatalf("re-dated %q on %q to %q", payload, topic, got.Payload)
		}
	})
}
