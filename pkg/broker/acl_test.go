package broker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
)

// The topics and filters of the ACL matrix: every topic family of both cars and both users,
// wildcard and shared filters, $SYS, and malformed or oversized forms.
var (
	aclFamilies = []string{
		"v/" + vinA + "/telemetry", "v/" + vinA + "/status", "v/" + vinA + "/cmd", "v/" + vinA + "/result",
		"v/" + vinA + "/keys", "v/" + vinA + "/keys/ack", "v/" + vinA + "/events", "v/" + vinA + "/events/ack",
		"v/" + vinB + "/telemetry", "v/" + vinB + "/status", "v/" + vinB + "/cmd", "v/" + vinB + "/result",
		"v/" + vinB + "/keys", "v/" + vinB + "/keys/ack", "v/" + vinB + "/events", "v/" + vinB + "/events/ack",
		"app/" + userX + "/cmd", "app/" + userX + "/reply",
		"app/" + userY + "/cmd", "app/" + userY + "/reply",
		"v/" + vinA + "/other", "v/" + vinA, "app/" + userX + "/other",
		"v/" + strings.ToLower(vinA) + "/cmd", // not a VIN, but the gateway's tree
	}
	aclWildcards = []string{
		"v/+/cmd", "v/#", "#", "+", "app/#", "app/+/reply", "app/+/cmd", "v/+/result", "v/+/+",
		"v/" + vinA + "/#", "v/" + vinA + "/+", "app/" + userX + "/#", "+/" + vinA + "/cmd", "+/#",
		"$SYS/#", "$SYS/broker/clients/connected", "$SYS/+",
		"$share/gw/v/+/result", "$share/gw/app/+/cmd", "$SHARE/gw/v/#", "$share/gw/v/" + vinA + "/cmd",
		"$share/gw/#", "$share/gw/$SYS/#", "$share//v/#", "$share/g+/v/#", "$share/gw", "$share/gw/",
	}
	aclMalformed = []string{
		"", "v", "v/", "app", "/v/" + vinA + "/cmd", "v//cmd", "v/" + vinA + "/cmd/",
		"v/" + vinA + "//cmd", "v/a+/cmd", "v/#/cmd", "v/" + vinA + "/cmd#", "V/" + vinA + "/cmd",
		"v/" + vinA + "/cmd\x00", "other/topic",
		"$SYS/broker/uptime", "$sys/#", "$foo/bar",
		"v/" + vinA + "/" + strings.Repeat("x", DefaultMaxTopicBytes), // too long
	}
)

func aclUniverse() []string {
	var u []string
	u = append(u, aclFamilies...)
	u = append(u, aclWildcards...)
	return append(u, aclMalformed...)
}

// TestACLMatrix asserts every cell of identity × topic × direction against the table of
// docs/PROTOCOL.md ("Topics and ACL"): a cell is allowed exactly if it is listed here.
func TestACLMatrix(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	valid := now.Add(time.Hour)
	acl := ACL{MaxTopicBytes: DefaultMaxTopicBytes, Clock: clocktest.New(now)}

	vehicle := func(vin string) (pub, sub []string) {
		for _, s := range []string{"telemetry", "status", "result", "keys/ack", "events"} {
			pub = append(pub, "v/"+vin+"/"+s)
		}
		return pub, []string{"v/" + vin + "/cmd", "v/" + vin + "/keys", "v/" + vin + "/events/ack"}
	}
	carAPub, carASub := vehicle(vinA)
	carBPub, carBSub := vehicle(vinB)

	// The gateway publishes to any well-formed topic under v/ or app/ and subscribes to the
	// same plus the filters that cannot match outside them.
	gwPub := aclFamilies
	gatewaySubs := append(append([]string{}, gwPub...),
		"v/+/cmd", "v/#", "app/#", "app/+/reply", "app/+/cmd", "v/+/result", "v/+/+",
		"v/"+vinA+"/#", "v/"+vinA+"/+", "app/"+userX+"/#",
		"$share/gw/v/+/result", "$share/gw/app/+/cmd", "$SHARE/gw/v/#", "$share/gw/v/"+vinA+"/cmd")

	cases := []struct {
		name     string
		id       Identity
		pub, sub []string
	}{
		{"car A", Identity{Role: protocol.RoleVehicle, Subject: vinA, ExpiresAt: valid}, carAPub, carASub},
		{"car B", Identity{Role: protocol.RoleVehicle, Subject: vinB, ExpiresAt: valid}, carBPub, carBSub},
		{"app X", Identity{Role: protocol.RoleApp, Subject: userX, ExpiresAt: valid}, []string{"app/" + userX + "/cmd"}, []string{"app/" + userX + "/reply"}},
		{"app Y", Identity{Role: protocol.RoleApp, Subject: userY, ExpiresAt: valid}, []string{"app/" + userY + "/cmd"}, []string{"app/" + userY + "/reply"}},
		{"gateway", Identity{Role: protocol.RoleGateway, Subject: gwSub, ExpiresAt: valid}, gwPub, gatewaySubs},
		{"admin", Identity{Role: protocol.RoleAdmin, Subject: admSub, ExpiresAt: valid}, nil, []string{"$SYS/#", "$SYS/broker/clients/connected", "$SYS/+", "$SYS/broker/uptime"}},
		// Denied everything:
		{"car A, token expired", Identity{Role: protocol.RoleVehicle, Subject: vinA, ExpiresAt: now}, nil, nil},
		{"gateway, token expired", Identity{Role: protocol.RoleGateway, Subject: gwSub, ExpiresAt: now.Add(-time.Second)}, nil, nil},
		{"anonymous (no identity)", Identity{}, nil, nil},
		{"unknown role", Identity{Role: "superuser", Subject: gwSub, ExpiresAt: valid}, nil, nil},
		{"vehicle whose sub is no VIN", Identity{Role: protocol.RoleVehicle, Subject: "car1", ExpiresAt: valid}, nil, nil},
		{"app whose sub is reserved", Identity{Role: protocol.RoleApp, Subject: "gateway", ExpiresAt: valid}, nil, nil},
	}
	set := func(l []string) map[string]bool {
		m := map[string]bool{}
		for _, s := range l {
			m[s] = true
		}
		return m
	}
	cells := 0
	for _, c := range cases {
		pub, sub := set(c.pub), set(c.sub)
		for _, topic := range aclUniverse() {
			for _, write := range []bool{true, false} {
				want := sub[topic]
				dir := "subscribe/receive"
				if write {
					want, dir = pub[topic], "publish"
				}
				if got := acl.Allow(c.id, topic, write); got != want {
					t.Errorf("%s %s %q: allowed=%v, want %v", c.name, dir, topic, got, want)
				}
				cells++
			}
		}
	}
	t.Logf("%d cells", cells)
}

// TestACLMaxTopicBytes checks the bound is the configured one.
func TestACLMaxTopicBytes(t *testing.T) {
	t.Parallel()
	id := Identity{Role: protocol.RoleGateway, Subject: gwSub, ExpiresAt: time.Now().Add(time.Hour)}
	acl := ACL{MaxTopicBytes: 100}
	for n := 90; n <= 110; n++ {
		topic := "v/" + strings.Repeat("x", n-2)
		if got, want := acl.Allow(id, topic, true), n <= 100; got != want {
			t.Errorf("len %d: allowed=%v, want %v", n, got, want)
		}
	}
}

func TestSplitLevels(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in        string
		wildcards bool
		want      string // levels joined by |, or "!" for refused
	}{
		{"a/b/c", false, "a|b|c"},
		{"a/+/#", true, "a|+|#"},
		{"a/+/#", false, "!"},
		{"a/#/b", true, "!"},
		{"a//b", true, "!"},
		{"/a", true, "!"},
		{"a/", true, "!"},
		{"a/b+", true, "!"},
		{"#", true, "#"},
	} {
		levels, ok := splitLevels(c.in, c.wildcards)
		got := strings.Join(levels, "|")
		if !ok {
			got = "!"
		}
		if got != c.want {
			t.Errorf("splitLevels(%q, %v) = %s, want %s", c.in, c.wildcards, got, c.want)
		}
	}
}

func ExampleACL_Allow() {
	acl := ACL{}
	car := Identity{Role: protocol.RoleVehicle, Subject: "WVWZZZ1JZXW000001", ExpiresAt: time.Now().Add(time.Hour)}
	fmt.Println(acl.Allow(car, "v/WVWZZZ1JZXW000001/telemetry", true))
	fmt.Println(acl.Allow(car, "v/WVWZZZ1JZXW000002/cmd", false))
	fmt.Println(acl.Allow(car, "v/+/cmd", false))
	// Output:
	// true
	// false
	// false
}
