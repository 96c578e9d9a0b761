package broker

import (
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// SharedRedeliveryHook keeps a shared subscription's QoS 1 messages alive when the member that
// holds them leaves. mochi gives each message of a share group ($share/GROUP/FILTER) to one
// member; when that member's clean session ends, mochi clears the messages it had sent and not
// yet had acknowledged (ClearInflights, OnQosDropped) and gives them to nobody. This hook hands
// each of them, marked DUP, to another live member of the same group, once: a gateway replica
// that dies with requests it had not decided leaves them to the survivors.
//
// It also picks shared members itself (OnSelectSubscribers): only among live clients, so that a
// member whose connection has closed, and whose in-flight messages are about to be cleared, is
// not handed a new message in that window.
//
// Bounded: nothing is buffered. A message for which no live member has room in its in-flight
// window (the server's MaximumInflight) is dropped, as mochi drops it, counted and logged.
// Messages still within the leaving client's write queue are in its in-flight set too (mochi
// records them before queueing), so they are handed on as well.
type SharedRedeliveryHook struct {
	mqtt.HookBase
	server *mqtt.Server
	log    *slog.Logger

	redelivered atomic.Int64 // messages handed to another member
	lost        atomic.Int64 // messages no live member could take
	lastLog     atomic.Int64 // unix ns of the last warning: one a second, not one per message
	lastInfo    atomic.Int64 // likewise for the note of a redelivery
}

// NewSharedRedeliveryHook returns the hook for server; log receives a note when messages are
// handed on and a warning when one is lost, each at most once a second (nil: discard).
func NewSharedRedeliveryHook(server *mqtt.Server, log *slog.Logger) *SharedRedeliveryHook {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SharedRedeliveryHook{server: server, log: log}
}

// ID names the hook in mochi's logs.
func (h *SharedRedeliveryHook) ID() string { return "telematics-shared-redelivery" }

// Provides declares the events this hook handles.
func (h *SharedRedeliveryHook) Provides(b byte) bool {
	return b == mqtt.OnQosDropped || b == mqtt.OnSelectSubscribers
}

// Redelivered is how many messages were handed to another member of their group.
func (h *SharedRedeliveryHook) Redelivered() int64 { return h.redelivered.Load() }

// Lost is how many messages of a leaving member no live member of its group could take.
func (h *SharedRedeliveryHook) Lost() int64 { return h.lost.Load() }

// live reports whether id is a connected client that is not closing.
func (h *SharedRedeliveryHook) live(id string) (*mqtt.Client, bool) {
	cl, ok := h.server.Clients.Get(id)
	if !ok || cl.Closed() || cl.Net.Conn == nil {
		return nil, false
	}
	return cl, true
}

// OnSelectSubscribers picks one member of each share group at random among its live members
// (mochi's own choice may fall on a closed one). A group with no live member is left to mochi.
func (h *SharedRedeliveryHook) OnSelectSubscribers(subs *mqtt.Subscribers, _ packets.Packet) *mqtt.Subscribers {
	if len(subs.Shared) == 0 {
		return subs
	}
	selected := make(map[string]packets.Subscription, len(subs.Shared))
	for _, members := range subs.Shared {
		id, sub, ok := h.pick(members, "")
		if !ok {
			for id, sub = range members { // no live member: mochi's choice, the first one
				break
			}
		}
		if prev, ok := selected[id]; ok {
			sub = prev.Merge(sub)
		}
		selected[id] = sub
	}
	subs.SharedSelected = selected
	return subs
}

// pick chooses a live member of a group other than except, at random.
func (h *SharedRedeliveryHook) pick(members map[string]packets.Subscription, except string) (string, packets.Subscription, bool) {
	ids := make([]string, 0, len(members))
	for id := range members {
		if id == except {
			continue
		}
		if _, ok := h.live(id); ok {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return "", packets.Subscription{}, false
	}
	id := ids[rand.IntN(len(ids))]
	return id, members[id], true
}

// OnQosDropped hands a closed client's dropped QoS 1 message of a share group to another live
// member of that group. A live client's drops (an expired message) are left alone.
func (h *SharedRedeliveryHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if !cl.Closed() || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || pk.TopicName == "" {
		return
	}
	if pk.Expiry > 0 && pk.Expiry < time.Now().Unix() {
		return // expired: nobody gets it
	}
	subs := h.server.Topics.Subscribers(pk.TopicName)
	for _, members := range subs.Shared {
		if _, ok := members[cl.ID]; !ok {
			continue // cl got it through another group, or a plain subscription
		}
		for range len(members) {
			id, sub, ok := h.pick(members, cl.ID)
			if !ok {
				break
			}
			if h.deliver(id, sub, pk) {
				total := h.redelivered.Add(1)
				if now := time.Now().UnixNano(); now-h.lastInfo.Load() > int64(time.Second) {
					h.lastInfo.Store(now)
					h.log.Info("shared subscription message of a leaving member handed to another member",
						"client_id", cl.ID, "to", id, "topic", pk.TopicName, "redelivered_total", total)
				}
				return
			}
			// Full or just closed: try another; at most once per member.
			delete(members, id)
		}
		break
	}
	h.lost.Add(1)
	if now := time.Now().UnixNano(); now-h.lastLog.Load() > int64(time.Second) {
		h.lastLog.Store(now)
		h.log.Warn("shared subscription message of a leaving member lost: no live member of its group could take it",
			"client_id", cl.ID, "topic", pk.TopicName, "lost_total", h.lost.Load())
	}
}

// deliver sends pk to the member id as a redelivery (DUP) with a new packet id, recorded in
// its in-flight set first, as mochi's publishToClient does; false if it has no room or its
// connection has closed. A member that closes after this hands it on again in its turn.
func (h *SharedRedeliveryHook) deliver(id string, sub packets.Subscription, pk packets.Packet) bool {
	target, ok := h.live(id)
	if !ok {
		return false
	}
	out := pk.Copy(false)
	out.FixedHeader.Dup = true
	out.FixedHeader.Retain = false
	out.Mods.MaxSize = 0 // the target's own limit, set by WritePacket
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	out.Properties.SubscriptionIdentifier = nil
	if len(sub.Identifiers) > 0 {
		for _, si := range sub.Identifiers {
			out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, si)
		}
	}
	if sub.Qos < out.FixedHeader.Qos {
		out.FixedHeader.Qos = sub.Qos
	}
	if out.FixedHeader.Qos > 0 {
		if target.State.Inflight.Len() >= int(h.server.Options.Capabilities.MaximumInflight) {
			return false
		}
		pid, err := target.NextPacketID()
		if err != nil {
			return false
		}
		out.PacketID = uint16(pid)
		if !target.State.Inflight.Set(out) {
			return false
		}
		atomic.AddInt64(&h.server.Info.Inflight, 1)
		target.State.Inflight.DecreaseSendQuota()
	}
	if err := target.WritePacket(out); err != nil && out.FixedHeader.Qos > 0 {
		// The target closed meanwhile: if its own clean-up has already run, the message is
		// no longer in any set; take it back and try another member.
		if target.State.Inflight.Delete(out.PacketID) {
			atomic.AddInt64(&h.server.Info.Inflight, -1)
			target.State.Inflight.IncreaseSendQuota()
			return false
		}
		return true // its clean-up took it and handed it on
	}
	return true
}
