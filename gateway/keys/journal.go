package keys

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// OnEvent files a car's journal entry (what it did over the local link) in the audit log,
// once: entries carry a per-car sequence number, and a redelivered one is ignored.
func (s *Service) OnEvent(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixEvents {
		return
	}
	var ev protocol.VehicleEvent
	if err := protocol.Decode(m.Payload, &ev); err != nil || ev.VIN != vin || ev.Seq == 0 {
		s.log.Warn("malformed vehicle event", "vin", vin)
		return
	}
	detail := fmt.Sprintf("%s key=%s seq=%d", ev.Kind, ev.KeyID, ev.Seq)
	if ev.Count > 1 {
		// A summary the car wrote while its journal was full: every refusal it stands for.
		detail += fmt.Sprintf(" count=%d first_ts=%d", ev.Count, ev.FirstTsMs)
	}
	err := s.st.Update(context.Background(), func(tx kv.Tx) error {
		// Every filed (vin, seq) is remembered, so a redelivered entry is ignored even when
		// entries arrive out of order.
		k := binary.BigEndian.AppendUint64([]byte(vin+"/"), ev.Seq)
		if old, err := tx.Get(bucketJournal, k); err != nil || old != nil {
			return err
		}
		nowMs := s.clk.Now().UnixMilli()
		if err := pruneJournalTx(tx, vin, nowMs-journalMarkerTTL.Milliseconds()); err != nil {
			return err
		}
		if err := tx.Put(bucketJournal, k, binary.BigEndian.AppendUint64(nil, uint64(nowMs))); err != nil {
			return err
		}
		return s.audit.AppendTx(tx, audit.Event{TsMs: ev.TsMs, Kind: audit.KindVehicle, User: ev.User, VIN: vin, CmdID: ev.CmdID,
			Action: string(ev.Action), Outcome: ev.Status, Reason: string(ev.Reason), Detail: detail})
	})
	if err != nil {
		s.log.Error("file vehicle event", "vin", vin, "err", err)
		return
	}
	// The entry is committed (now or before): the car may delete it. A lost acknowledgement
	// costs a redelivery after the car's next reconnect, which is ignored and acknowledged.
	ack, err := json.Marshal(protocol.EventsAck{V: protocol.Version, VIN: vin, Seqs: []uint64{ev.Seq}})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.bus.Publish(ctx, protocol.VehicleTopic(vin, protocol.SuffixEventsAck), 1, false, ack); err != nil {
		s.log.Warn("journal acknowledgement not published; the car sends the entry again after its next reconnect", "vin", vin, "seq", ev.Seq, "err", err)
	}
}

// journalMarkerTTL is how long the gateway remembers that it filed a car's journal entry. A
// car resends an entry only until the gateway's acknowledgement reaches it (after its next
// reconnect at the latest), so a week covers a car off the network for days; an entry resent
// later still is filed a second time, never lost. Without an end, the markers of a car that
// journals for years (someone next to it trying keys, every refusal is an entry) would grow
// without bound.
const journalMarkerTTL = 7 * 24 * time.Hour

// journalPruneBatch bounds the markers one filing deletes, so a backlog is worked off a little
// at each entry instead of in one long transaction.
const journalPruneBatch = 64

// pruneJournalTx deletes vin's oldest filing markers made before cutoffMs. Markers are keyed
// by the car's sequence numbers, which grow with time, so the scan stops at the first newer
// one. Markers of older builds hold no time and go first.
func pruneJournalTx(tx kv.Tx, vin string, cutoffMs int64) error {
	var old [][]byte
	err := tx.Scan(bucketJournal, []byte(vin+"/"), nil, func(k, v []byte) error {
		if len(old) >= journalPruneBatch || len(v) == 8 && int64(binary.BigEndian.Uint64(v)) >= cutoffMs {
			return kv.Stop
		}
		old = append(old, bytes.Clone(k))
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range old { // not while the scan walks the bucket
		if err := tx.Delete(bucketJournal, k); err != nil {
			return err
		}
	}
	return nil
}
