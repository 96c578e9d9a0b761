package broker

import (
	"context"
	"log/slog"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/pkg/clock"
	"telematics/pkg/protocol"
)

// ACL is the topic policy of docs/PROTOCOL.md ("Topics and ACL") as a pure function of who asks,
// which topic or filter, and which direction:
//
//	vehicle VIN  publish   v/VIN/telemetry, v/VIN/status, v/VIN/result, v/VIN/keys/ack, v/VIN/events
//	             subscribe v/VIN/cmd, v/VIN/keys, v/VIN/events/ack
//	app user U   publish   app/U/cmd
//	             subscribe app/U/reply
//	gateway      publish   any topic under v/ or app/
//	             subscribe any filter whose every match lies under v/ or app/ ($share/GROUP/… too)
//	admin        subscribe filters under $SYS/
//
// Vehicles and apps name their topics exactly: no wildcards, no shared subscriptions. Anything
// else is denied, and so is everything once the identity's token has expired.
type ACL struct {
	// MaxTopicBytes bounds topics and filters; 0 means DefaultMaxTopicBytes.
	MaxTopicBytes int
	// Clock decides token expiry; nil means the real clock.
	Clock clock.Clock
}

// Allow reports whether id may publish to topic (write) or subscribe to the filter topic and
// receive messages published on it (!write). mochi asks with write=false both for subscription
// filters and for the concrete topic of every delivery, so a filter and the topics it names
// get the same answer.
func (a ACL) Allow(id Identity, topic string, write bool) bool {
	maxBytes := a.MaxTopicBytes
	if maxBytes <= 0 {
		maxBytes = DefaultMaxTopicBytes
	}
	if topic == "" || len(topic) > maxBytes || strings.IndexByte(topic, 0) >= 0 {
		return false
	}
	if !clock.Or(a.Clock).Now().Before(id.ExpiresAt) {
		return false // an expired token grants nothing: reconnect with a fresh one
	}

	switch id.Role {
	case protocol.RoleVehicle:
		if !protocol.ValidVIN(id.Subject) {
			return false
		}
		suffixes := vehicleReceives
		if write {
			suffixes = vehiclePublishes
		}
		for _, s := range suffixes {
			if topic == protocol.VehicleTopic(id.Subject, s) {
				return true
			}
		}
		return false

	case protocol.RoleApp:
		if !protocol.ValidUser(id.Subject) {
			return false
		}
		if write {
			return topic == protocol.AppTopic(id.Subject, protocol.SuffixCmd)
		}
		return topic == protocol.AppTopic(id.Subject, protocol.SuffixReply)

	case protocol.RoleGateway:
		if write {
			levels, ok := splitLevels(topic, false)
			return ok && len(levels) >= 2 && gatewayTree(levels[0])
		}
		filter, ok := stripShare(topic)
		if !ok {
			return false
		}
		levels, ok := splitLevels(filter, true)
		// The first level is a literal v or app and something follows it: every topic the
		// filter can match then starts with v/ or app/.
		return ok && len(levels) >= 2 && gatewayTree(levels[0])

	case protocol.RoleAdmin:
		if write {
			return false
		}
		levels, ok := splitLevels(topic, true)
		return ok && len(levels) >= 2 && levels[0] == "$SYS"
	}
	return false
}

var (
	vehiclePublishes = []string{
		protocol.SuffixTelemetry, protocol.SuffixStatus, protocol.SuffixResult,
		protocol.SuffixKeysAck, protocol.SuffixEvents,
	}
	vehicleReceives = []string{protocol.SuffixCmd, protocol.SuffixKeys, protocol.SuffixEventsAck}
)

func gatewayTree(first string) bool {
	return first+"/" == protocol.VehiclePrefix || first+"/" == protocol.AppPrefix
}

// stripShare removes a "$share/GROUP/" prefix, which mochi recognises in any letter case.
// ok is false for a malformed shared filter.
func stripShare(filter string) (string, bool) {
	first, rest, found := strings.Cut(filter, "/")
	if !strings.EqualFold(first, "$share") {
		return filter, true
	}
	group, rest, found2 := strings.Cut(rest, "/")
	if !found || !found2 || group == "" || strings.ContainsAny(group, "+#") {
		return "", false
	}
	return rest, true
}

// splitLevels splits a topic or filter into its levels. ok is false for the forms this policy
// refuses outright: an empty level (leading, trailing or doubled '/'), a wildcard that is not a
// whole level, '#' anywhere but last, and any wildcard when wildcards is false.
func splitLevels(s string, wildcards bool) ([]string, bool) {
	levels := strings.Split(s, "/")
	for i, l := range levels {
		switch {
		case l == "":
			return nil, false
		case l == "+":
			if !wildcards {
				return nil, false
			}
		case l == "#":
			if !wildcards || i != len(levels)-1 {
				return nil, false
			}
		case strings.ContainsAny(l, "+#"):
			return nil, false
		}
	}
	return levels, true
}

// ACLHook enforces the ACL on every publish, subscribe and delivery. It knows identities from
// the AuthHook, so a client the AuthHook has not admitted (or has forgotten on disconnect) is
// denied everything; that includes deliveries to a persistent session whose client is away.
type ACLHook struct {
	mqtt.HookBase
	acl  ACL
	auth *AuthHook
}

// NewACLHook returns the hook; auth supplies the identities.
func NewACLHook(acl ACL, auth *AuthHook) *ACLHook {
	return &ACLHook{acl: acl, auth: auth}
}

// ID names the hook in mochi's logs.
func (h *ACLHook) ID() string { return "telematics-acl" }

// Provides declares the one event this hook handles.
func (h *ACLHook) Provides(b byte) bool { return b == mqtt.OnACLCheck }

// OnACLCheck is mochi's question: may cl publish to (write) or subscribe to / receive (!write)
// topic?
func (h *ACLHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id, ok := h.auth.Identity(cl)
	if !ok || (write && cl.Closed()) {
		// A disconnected client keeps its identity only to receive what is queued for it.
		return false
	}
	if h.acl.Allow(id, topic, write) {
		return true
	}
	if h.Log != nil && h.Log.Enabled(context.Background(), slog.LevelDebug) {
		h.Log.Debug("mqtt acl denied", "client_id", clip(cl.ID), "role", id.Role, "sub", id.Subject,
			"topic", clip(topic), "write", write)
	}
	return false
}

// clip shortens a client-chosen string before it reaches a log line.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
