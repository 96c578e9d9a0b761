package broker

import (
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
)

// BenchmarkACLAllow is the policy check mochi makes on every publish (write) and on every
// delivery and subscription (read), per case: a car's telemetry (the hot one: every message),
// a car receiving its command, the gateway's wildcard and shared subscriptions, and a denial.
func BenchmarkACLAllow(b *testing.B) {
	now := time.Unix(1_700_000_000, 0)
	acl := ACL{MaxTopicBytes: DefaultMaxTopicBytes, Clock: clocktest.New(now)}
	valid := now.Add(time.Hour)
	car := Identity{Role: protocol.RoleVehicle, Subject: vinA, ExpiresAt: valid}
	gw := Identity{Role: protocol.RoleGateway, Subject: gwSub, ExpiresAt: valid}
	app := Identity{Role: protocol.RoleApp, Subject: userX, ExpiresAt: valid}
	cases := []struct {
		name  string
		id    Identity
		topic string
		write bool
		want  bool
	}{
		{"car-publish-telemetry", car, "v/" + vinA + "/telemetry", true, true},
		{"car-publish-events", car, "v/" + vinA + "/events", true, true},
		{"car-receive-cmd", car, "v/" + vinA + "/cmd", false, true},
		{"car-denied-other-car", car, "v/" + vinB + "/telemetry", true, false},
		{"app-publish-cmd", app, "app/" + userX + "/cmd", true, true},
		{"gateway-subscribe-wildcard", gw, "v/+/telemetry", false, true},
		{"gateway-subscribe-shared", gw, "$share/gw/v/+/result", false, true},
		{"gateway-publish-cmd", gw, "v/" + vinA + "/cmd", true, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if acl.Allow(c.id, c.topic, c.write) != c.want {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}
