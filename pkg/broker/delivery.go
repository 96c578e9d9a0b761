package broker

import (
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
)

// GatewayDeliveryHook keeps mochi from losing what cars send the gateway. mochi drops a
// delivery, QoS 1 included, when the subscriber's write queue is full, and the gateway is the
// one subscriber every car's telemetry, results and journal flow into: under fan-in load the
// standalone broker lost most of them (measured: 85% of acknowledged QoS 1 telemetry). For a
// subscriber with the gateway role, this hook writes a dropped message straight to its
// connection instead, as QoS 0, in the publisher's goroutine: the publisher waits for the
// gateway (backpressure) rather than its message being thrown away. Only a broken connection
// still loses it. Cars and apps keep mochi's behaviour.
type GatewayDeliveryHook struct {
	mqtt.HookBase
	auth *AuthHook

	lost    atomic.Int64 // deliveries to a gateway lost on a broken connection
	lastLog atomic.Int64 // unix ns of the last warning: one a second, not one per message
}

// NewGatewayDeliveryHook returns the hook; auth tells which clients are gateways.
func NewGatewayDeliveryHook(auth *AuthHook) *GatewayDeliveryHook {
	return &GatewayDeliveryHook{auth: auth}
}

// ID names the hook.
func (h *GatewayDeliveryHook) ID() string { return "telematics-gateway-delivery" }

// Provides declares OnPublishDropped only.
func (h *GatewayDeliveryHook) Provides(b byte) bool { return b == mqtt.OnPublishDropped }

// OnPublishDropped writes the message to a gateway client directly.
func (h *GatewayDeliveryHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	id, ok := h.auth.Identity(cl)
	if !ok || id.Role != protocol.RoleGateway {
		return
	}
	out := pk.Copy(false)
	out.FixedHeader.Qos = 0
	out.FixedHeader.Retain = false
	out.PacketID = 0
	if err := cl.WritePacket(out); err != nil {
		n := h.lost.Add(1)
		now, last := time.Now().UnixNano(), h.lastLog.Load()
		if now-last >= int64(time.Second) && h.lastLog.CompareAndSwap(last, now) {
			h.Log.Warn("delivery to the gateway lost", "client", cl.ID, "topic", clip(pk.TopicName), "error", err, "lost_so_far", n)
		}
	}
}
