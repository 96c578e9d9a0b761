package broker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

// netIdentity is one connected client of the network matrix.
type netIdentity struct {
	name string
	id   Identity // for the expected outcome, from the pure ACL
	cl   paho.Client
	rec  *recorder
	// sentinel is a topic this identity may publish, used to know when everything it
	// published before has been delivered (mochi handles one client's packets in order).
	sentinel string
}

func connectMatrix(t *testing.T, f *fixture) []*netIdentity {
	t.Helper()
	exp := f.clock.Now().Add(time.Hour)
	mk := func(name, sub string, role protocol.Role, suffix, sentinel string) *netIdentity {
		n := &netIdentity{name: name, id: Identity{Role: role, Subject: sub, ExpiresAt: exp}, rec: &recorder{}, sentinel: sentinel}
		// Order matters (paho's default): handlers run in arrival order, so a sentinel
		// arrives after everything published before it.
		n.cl = mustPaho(t, f.tcpURL(), f.creds(t, sub, role, suffix), nil)
		return n
	}
	return []*netIdentity{
		mk("car A", vinA, protocol.RoleVehicle, "", "v/"+vinA+"/events"),
		mk("car B", vinB, protocol.RoleVehicle, "", "v/"+vinB+"/events"),
		mk("app X", userX, protocol.RoleApp, "1", "app/"+userX+"/cmd"),
		mk("app Y", userY, protocol.RoleApp, "1", "app/"+userY+"/cmd"),
		mk("gateway", gwSub, protocol.RoleGateway, "", "v/"+vinA+"/cmd"),
		mk("admin", admSub, protocol.RoleAdmin, "cli", ""),
	}
}

// TestACLNetworkSubscribe: over the network, every filter of the matrix gets a granted SUBACK
// exactly where the ACL allows it, and a failure (0x80) everywhere else.
func TestACLNetworkSubscribe(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	acl := ACL{MaxTopicBytes: DefaultMaxTopicBytes, Clock: f.clock}
	var filters []string
	for _, s := range aclUniverse() {
		// Filters paho or mochi reject as malformed before the ACL sees them are covered
		// by the pure matrix.
		if s != "" && mqtt.IsValidFilter(s, false) && !strings.ContainsRune(s, 0) {
			filters = append(filters, s)
		}
	}
	for _, n := range connectMatrix(t, f) {
		for _, filter := range filters {
			want := byte(subRefused)
			if acl.Allow(n.id, filter, false) {
				want = subGrantedQoS1
			}
			if got := subscribe(t, n.cl, filter, n.rec.handle); got != want {
				t.Errorf("%s subscribe %q: SUBACK %#x, want %#x", n.name, filter, got, want)
			}
		}
	}
}

// TestACLNetworkDelivery: every identity publishes to every topic of every family; the only
// messages that reach anyone are the allowed ones. The gateway watches both trees through
// allowed wildcard filters, each car and app listens on its own topics and tries (and fails)
// to listen on everybody else's.
func TestACLNetworkDelivery(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	acl := ACL{MaxTopicBytes: DefaultMaxTopicBytes, Clock: f.clock}
	ids := connectMatrix(t, f)
	gw := ids[4]

	// Subscriptions: the gateway's allowed wildcards; for everybody else every concrete
	// topic of the families (most are refused, which the SUBACK shows).
	for _, filter := range []string{"v/#", "app/#"} {
		if code := subscribe(t, gw.cl, filter, gw.rec.handle); code != subGrantedQoS1 {
			t.Fatalf("gateway subscribe %q: %#x", filter, code)
		}
	}
	for _, n := range ids {
		if n == gw {
			continue
		}
		for _, topic := range aclFamilies {
			want := byte(subRefused)
			if acl.Allow(n.id, topic, false) {
				want = subGrantedQoS1
			}
			if got := subscribe(t, n.cl, topic, n.rec.handle); got != want {
				t.Fatalf("%s subscribe %q: SUBACK %#x, want %#x", n.name, topic, got, want)
			}
		}
		// Refused for all but the admin's $SYS/#. paho calls every local handler whose
		// filter matches, refused or not, so these get one that records nothing: the
		// recorders count what the broker delivered, once per message.
		for _, filter := range []string{"#", "v/#", "app/#", "v/+/cmd", "$SYS/#"} {
			h := func(paho.Client, paho.Message) {}
			if filter == "$SYS/#" {
				h = n.rec.handle
			}
			subscribe(t, n.cl, filter, h)
		}
	}

	// Every identity publishes to every topic (QoS 0: on MQTT 3.1.1 a refused QoS 1
	// publish ends the connection, see TestDeniedQoS1PublishDisconnects). mochi handles one
	// client's packets in order, so once a SUBACK answers a later SUBSCRIBE, every one of
	// those publishes has been delivered to the receivers' queues or refused.
	for _, n := range ids {
		for _, topic := range aclFamilies {
			publish(t, n.cl, topic, 0, "from "+n.name)
		}
	}
	for _, n := range ids {
		subscribe(t, n.cl, "flush/"+strings.ReplaceAll(n.name, " ", "-"), n.rec.handle)
	}
	// Sentinels queue behind everything above; a receiver's queue and paho's handler calls
	// keep their order.
	for _, n := range ids {
		if n.sentinel != "" {
			publish(t, n.cl, n.sentinel, 0, "sentinel "+n.name)
		}
	}

	// Wait for every sentinel at the gateway (which sees both trees) and at the receivers
	// of the gateway's sentinel (car A listens on v/A/cmd).
	testutil.Eventually(t, waitFor, func() error {
		for _, n := range ids {
			if n.sentinel != "" && !gw.rec.has(n.sentinel+" sentinel "+n.name) {
				return fmt.Errorf("gateway has not seen %s's sentinel", n.name)
			}
		}
		if !ids[0].rec.has("v/" + vinA + "/cmd sentinel gateway") {
			return errors.New("car A has not seen the gateway's sentinel")
		}
		return nil
	})

	// The gateway's sentinel goes to v/A/cmd only, so for the others (which only receive
	// from the gateway) wait with a second round: the gateway publishes to each one's own
	// receive topic and we wait for it.
	gwTail := map[string]string{
		"car B": "v/" + vinB + "/keys",
		"app X": "app/" + userX + "/reply",
		"app Y": "app/" + userY + "/reply",
	}
	for _, topic := range gwTail {
		publish(t, gw.cl, topic, 1, "tail")
	}
	testutil.Eventually(t, waitFor, func() error {
		for _, n := range ids {
			if topic, ok := gwTail[n.name]; ok && (!n.rec.has(topic+" tail") || !gw.rec.has(topic+" tail")) {
				return fmt.Errorf("%s or the gateway has not seen the gateway's tail", n.name)
			}
		}
		return nil
	})

	// Now compare, for every receiver, what arrived with what the ACL allows: a message of
	// publisher P on topic T reaches receiver R exactly if P may publish T, R subscribed to
	// a filter matching T, and R may receive T.
	for _, r := range ids {
		var want []string
		for _, p := range ids {
			for _, topic := range aclFamilies {
				// Everybody subscribed to every family topic (the gateway through v/# and
				// app/#), so delivery depends on the ACL alone.
				if acl.Allow(p.id, topic, true) && acl.Allow(r.id, topic, false) {
					want = append(want, topic+" from "+p.name)
				}
			}
			if p.sentinel != "" && (r == gw || acl.Allow(r.id, p.sentinel, false)) {
				want = append(want, p.sentinel+" sentinel "+p.name)
			}
		}
		if topic, ok := gwTail[r.name]; ok {
			want = append(want, topic+" tail")
		}
		if r == gw {
			for _, topic := range gwTail {
				want = append(want, topic+" tail")
			}
		}
		var got []string
		for _, m := range r.rec.all() {
			if !strings.HasPrefix(m, "$SYS/") {
				got = append(got, m)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s received\n  %s\nwant\n  %s", r.name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
	// The admin received $SYS topics only (mochi publishes them every second, retained).
	testutil.Eventually(t, waitFor, func() error {
		for _, m := range ids[5].rec.all() {
			if strings.HasPrefix(m, "$SYS/") {
				return nil
			}
		}
		return errors.New("admin has received no $SYS message")
	})
}

// TestDeniedQoS1PublishDisconnects: on MQTT 3.1.1 a refused QoS 1 publish cannot be
// answered with a failure code, so mochi closes the connection; nothing is delivered.
func TestDeniedQoS1PublishDisconnects(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var rec recorder
	if code := subscribe(t, gw, "v/#", rec.handle); code != subGrantedQoS1 {
		t.Fatalf("gateway subscribe: %#x", code)
	}
	lost := make(chan error, 1)
	car := mustPaho(t, f.tcpURL(), f.creds(t, vinA, protocol.RoleVehicle, ""), func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	car.Publish("v/"+vinB+"/cmd", 1, false, "unlock") // not waited for: no PUBACK comes
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("connection not closed after a refused QoS 1 publish")
	}
	// The car's publish was handled (and refused) before its connection closed; a sentinel
	// published now lands in the gateway's queue behind anything it could have caused.
	publish(t, gw, "v/"+vinB+"/status", 1, "sentinel")
	testutil.Eventually(t, waitFor, func() error {
		if !rec.has("v/" + vinB + "/status sentinel") {
			return errors.New("sentinel not delivered")
		}
		return nil
	})
	if got := rec.all(); len(got) != 1 {
		t.Fatalf("gateway received %q, want only the sentinel", got)
	}
}

// TestExpiredTokenDeniedEverything: a client whose token expires while connected can neither
// publish, subscribe nor receive.
func TestExpiredTokenDeniedEverything(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var gwRec, carRec recorder
	subscribe(t, gw, "v/+/telemetry", gwRec.handle)

	tok, _, err := f.issuer.Issue(vinA, protocol.RoleVehicle, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	car := mustPaho(t, f.tcpURL(), creds{vinA, vinA, tok}, nil)
	if code := subscribe(t, car, "v/"+vinA+"/cmd", carRec.handle); code != subGrantedQoS1 {
		t.Fatalf("subscribe before expiry: %#x", code)
	}
	publish(t, gw, "v/"+vinA+"/cmd", 1, "before")
	publish(t, car, "v/"+vinA+"/telemetry", 0, "before")
	testutil.Eventually(t, waitFor, func() error {
		if !carRec.has("v/"+vinA+"/cmd before") || !gwRec.has("v/"+vinA+"/telemetry before") {
			return errors.New("not delivered before expiry")
		}
		return nil
	})

	f.clock.Advance(2 * time.Minute) // the car's token has expired; the gateway's has not

	publish(t, car, "v/"+vinA+"/telemetry", 0, "after")
	if code := subscribe(t, car, "v/"+vinA+"/keys", carRec.handle); code != subRefused {
		t.Fatalf("subscribe after expiry: %#x, want refused", code)
	}
	// The SUBACK came after the publish was handled; the gateway's own telemetry now queues
	// behind anything the car's publish could have caused.
	publish(t, gw, "v/"+vinB+"/telemetry", 1, "sentinel")
	testutil.Eventually(t, waitFor, func() error {
		if !gwRec.has("v/" + vinB + "/telemetry sentinel") {
			return errors.New("sentinel not delivered")
		}
		return nil
	})
	if gwRec.has("v/" + vinA + "/telemetry after") {
		t.Error("telemetry of an expired car delivered")
	}
	// Deliveries: the car's subscription from before expiry is still there, and mochi asks
	// the ACL hook about each message for this client, which now says no. (No sentinel can
	// prove a non-delivery to a client that may receive nothing.)
	cl, ok := f.b.Server().Clients.Get(vinA)
	if !ok {
		t.Fatal("car not connected")
	}
	hook := NewACLHook(ACL{MaxTopicBytes: DefaultMaxTopicBytes, Clock: f.clock}, f.b.Auth())
	if hook.OnACLCheck(cl, "v/"+vinA+"/cmd", false) {
		t.Error("delivery of v/A/cmd to an expired car allowed")
	}
	f.clock.Advance(-2 * time.Minute)
	if !hook.OnACLCheck(cl, "v/"+vinA+"/cmd", false) {
		t.Error("delivery of v/A/cmd refused before expiry: the check above proves nothing")
	}
}
