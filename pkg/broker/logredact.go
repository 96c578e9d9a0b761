package broker

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/mochi-mqtt/server/v2/packets"
)

// redactHandler is the handler of the logger handed to mochi. mochi logs whole packets (for
// example every refused publish, at warn level): a CONNECT carries a token as its password
// and an app's command carries a TOTP code. This handler replaces every packets.Packet in a
// record by a summary without password or payload.
type redactHandler struct{ next slog.Handler }

func redactPackets(h slog.Handler) slog.Handler { return redactHandler{next: h} }

func (h redactHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h redactHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h redactHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = redactAttr(a)
	}
	return redactHandler{next: h.next.WithAttrs(red)}
}

func (h redactHandler) WithGroup(name string) slog.Handler {
	return redactHandler{next: h.next.WithGroup(name)}
}

func redactAttr(a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindAny:
		switch pk := a.Value.Any().(type) {
		case packets.Packet:
			return slog.String(a.Key, packetSummary(&pk))
		case *packets.Packet:
			if pk != nil {
				return slog.String(a.Key, packetSummary(pk))
			}
		}
	case slog.KindGroup:
		group := a.Value.Group()
		red := make([]any, len(group))
		for i, g := range group {
			red[i] = redactAttr(g)
		}
		return slog.Group(a.Key, red...)
	}
	return a
}

// packetSummary names a packet without its secrets: type, packet id, topic, payload size.
func packetSummary(pk *packets.Packet) string {
	s := fmt.Sprintf("%s id=%d", packets.PacketNames[pk.FixedHeader.Type], pk.PacketID)
	if pk.TopicName != "" {
		s += fmt.Sprintf(" topic=%q", clip(pk.TopicName))
	}
	if len(pk.Payload) > 0 {
		s += fmt.Sprintf(" payload_bytes=%d", len(pk.Payload))
	}
	return s
}
