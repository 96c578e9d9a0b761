package mqttc

import (
	"errors"
	"strings"
)

// Errors returned by both implementations; test for them with errors.Is.
var (
	// ErrNotConnected means the client has no session with the broker right now, so nothing
	// was sent. Publish never queues a message for later: a caller that must deliver retries,
	// typically from Options.OnConnect.
	ErrNotConnected = errors.New("mqttc: not connected to the broker")
	// ErrClosed means Close was called; the client does nothing any more.
	ErrClosed = errors.New("mqttc: client closed")
	// ErrNotAuthorized means the broker refused the credentials (CONNACK "bad user name or
	// password" or "not authorized"). Retrying with the same credentials does not help: Dial
	// returns it at once instead of retrying.
	ErrNotAuthorized = errors.New("mqttc: broker refused the credentials")
	// ErrRefused means the broker refused the connection for another reason that retrying does
	// not cure (client id rejected, protocol version).
	ErrRefused = errors.New("mqttc: broker refused the connection")
	// ErrTLS means the TLS handshake with the broker failed in a way retrying does not cure:
	// its certificate does not verify against the trusted CA (or names another host), or it
	// does not speak TLS on that port. Dial returns it at once; there is no plain-text fallback.
	ErrTLS = errors.New("mqttc: TLS with the broker failed (wrong CA or host name, or not a TLS port; check --ca and the URL)")
	// ErrSubscribeRefused means the broker refused a subscription (SUBACK 0x80), usually
	// because the ACL denies the filter. The subscription is forgotten.
	ErrSubscribeRefused = errors.New("mqttc: broker refused the subscription")
	// ErrTimeout means the broker did not acknowledge in time. A QoS 1 message may still have
	// arrived: the error says "not confirmed", never "not delivered".
	ErrTimeout = errors.New("mqttc: no acknowledgement from the broker in time")
	// ErrInvalidTopic is returned for an empty or malformed topic name or filter.
	ErrInvalidTopic = errors.New("mqttc: invalid topic")
)

// validTopic reports whether topic may be published to: not empty, no wildcard, no NUL.
func validTopic(topic string) bool {
	return topic != "" && len(topic) <= 65535 && !strings.ContainsAny(topic, "+#\x00")
}

// validFilter reports whether filter is a well-formed subscription filter: a wildcard fills a
// whole level, and '#' only the last one.
func validFilter(filter string) bool {
	if filter == "" || len(filter) > 65535 || strings.ContainsRune(filter, 0) {
		return false
	}
	for rest := filter; ; {
		level, tail, more := strings.Cut(rest, "/")
		if strings.ContainsAny(level, "+#") && len(level) != 1 {
			return false
		}
		if level == "#" && more {
			return false
		}
		if !more {
			return true
		}
		rest = tail
	}
}
