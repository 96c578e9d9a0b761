package carstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"telematics/pkg/protocol"
)

// MaxJournalEntries bounds the unacknowledged refusals a car keeps one by one. Anyone who can
// reach the local link can make the car refuse things, and each refusal is a journal entry:
// without a bound a car kept offline could be made to fill its disk. Beyond it a refusal is
// counted into a summary entry (one per reason and key id, see MaxJournalSummaries), so none
// goes unrecorded, an attempt with a revoked key included. Executed commands need a valid phone
// key, so they are journaled one by one even beyond the bound, and none is ever lost.
const MaxJournalEntries = 1024

// MaxJournalSummaries bounds the summary entries a car keeps while its journal is full: one per
// reason and whitelisted key id (the key ids the car knows; refusals naming a key it does not
// know, or whose signature did not verify, count under their reason alone). Past the bound,
// refusals count under their reason alone too. Reasons are a closed list, so the summaries stay
// bounded whatever a stranger sends.
const MaxJournalSummaries = 256

// AppendJournal durably appends ev to the car's journal and returns the seq it got. When
// MaxJournalEntries entries wait for the gateway's acknowledgement, ev is counted into its
// summary entry instead (see MaxJournalSummaries) and the seq is 0: never dropped.
func (s *Store) AppendJournal(vin string, ev protocol.VehicleEvent) (uint64, error) {
	var seq uint64
	err := s.commit.Update(func(tx *bolt.Tx) error {
		seq = 0
		b, err := tx.Bucket(bucketCars).CreateBucketIfNotExists([]byte(vin))
		if err != nil {
			return err
		}
		if err := moveSummaries(b); err != nil {
			return err
		}
		if journalLen(b.Bucket(bucketJournal)) >= MaxJournalEntries {
			return summarize(b, ev)
		}
		ev.Seq = 0
		if err := appendJournal(b, ev); err != nil {
			return err
		}
		seq = b.Bucket(bucketJournal).Sequence()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("journal of %s: %w", vin, err)
	}
	return seq, nil
}

// summarize counts ev into its summary entry: by reason and key id when the whitelist knew the
// key (ev.User is set) and the bound allows, else by reason alone.
func summarize(car *bolt.Bucket, ev protocol.VehicleEvent) error {
	sb, err := car.CreateBucketIfNotExists(bucketSummary)
	if err != nil {
		return err
	}
	count := max(ev.Count, 1)
	key := []byte(string(ev.Reason) + "/" + ev.KeyID)
	if ev.User == "" || (sb.Get(key) == nil && sb.Stats().KeyN >= MaxJournalSummaries) {
		ev.KeyID, ev.User = "", ""
		key = []byte(string(ev.Reason) + "/")
	}
	sum := protocol.VehicleEvent{V: protocol.Version, VIN: ev.VIN, Kind: ev.Kind, KeyID: ev.KeyID, User: ev.User,
		Action: ev.Action, Status: ev.Status, Reason: ev.Reason, FirstTsMs: ev.TsMs, TsMs: ev.TsMs}
	if raw := sb.Get(key); raw != nil {
		if err := json.Unmarshal(raw, &sum); err != nil {
			return fmt.Errorf("journal summary %q: %w", key, err)
		}
		if sum.Action != ev.Action {
			sum.Action = "" // a summary of several actions names none
		}
	}
	sum.Count += count
	sum.TsMs = max(sum.TsMs, ev.TsMs)
	doc, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	return sb.Put(key, doc)
}

// moveSummaries moves summary entries into the journal, with seqs, while it has room. From
// then on they are ordinary entries: what they count does not change after they may have been
// published.
func moveSummaries(car *bolt.Bucket) error {
	sb := car.Bucket(bucketSummary)
	if sb == nil {
		return nil
	}
	var moved [][]byte
	room := MaxJournalEntries - journalLen(car.Bucket(bucketJournal))
	c := sb.Cursor()
	for k, v := c.First(); k != nil && len(moved) < room; k, v = c.Next() {
		var ev protocol.VehicleEvent
		if err := json.Unmarshal(v, &ev); err != nil {
			return fmt.Errorf("journal summary %q: %w", k, err)
		}
		if err := appendJournal(car, ev); err != nil {
			return err
		}
		moved = append(moved, bytes.Clone(k))
	}
	for _, k := range moved {
		if err := sb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// appendJournal gives ev the journal's next seq and stores it. NextSequence is rolled back with
// the transaction, so a Batch rerun hands out the same seq again.
func appendJournal(car *bolt.Bucket, ev protocol.VehicleEvent) error {
	j, err := car.CreateBucketIfNotExists(bucketJournal)
	if err != nil {
		return err
	}
	seq, err := j.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	doc, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return j.Put(binary.BigEndian.AppendUint64(nil, seq), doc)
}

// journalLen counts the entries of a journal bucket. Acknowledgements may remove entries out
// of order, so they are counted, up to MaxJournalEntries (executed commands may lie beyond).
func journalLen(j *bolt.Bucket) int {
	if j == nil {
		return 0
	}
	n := 0
	c := j.Cursor()
	for k, _ := c.First(); k != nil && n < MaxJournalEntries; k, _ = c.Next() {
		n++
	}
	return n
}

// Journal returns up to max of the car's unacknowledged journal entries with a seq above
// afterSeq, oldest first.
func (s *Store) Journal(vin string, afterSeq uint64, max int) ([]protocol.VehicleEvent, error) {
	var out []protocol.VehicleEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil || b.Bucket(bucketJournal) == nil {
			return nil
		}
		c := b.Bucket(bucketJournal).Cursor()
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, afterSeq+1)); k != nil && len(out) < max; k, v = c.Next() {
			var ev protocol.VehicleEvent
			// Unmarshal copies: nothing of v outlives the transaction.
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("journal entry %x: %w", k, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read journal of %s: %w", vin, err)
	}
	return out, nil
}

// JournalSummaries returns the summary entries not yet moved into the journal.
func (s *Store) JournalSummaries(vin string) ([]protocol.VehicleEvent, error) {
	var out []protocol.VehicleEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil || b.Bucket(bucketSummary) == nil {
			return nil
		}
		return b.Bucket(bucketSummary).ForEach(func(k, v []byte) error {
			var ev protocol.VehicleEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("journal summary %q: %w", k, err)
			}
			out = append(out, ev)
			return nil
		})
	})
	return out, err
}

// DeleteJournal removes the entries with the given seqs, once the gateway acknowledged them,
// and moves waiting summaries into the room that makes.
func (s *Store) DeleteJournal(vin string, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	err := s.commit.Update(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil || b.Bucket(bucketJournal) == nil {
			return nil
		}
		j := b.Bucket(bucketJournal)
		for _, seq := range seqs {
			if err := j.Delete(binary.BigEndian.AppendUint64(nil, seq)); err != nil {
				return err
			}
		}
		return moveSummaries(b)
	})
	if err != nil {
		return fmt.Errorf("delete journal entries of %s: %w", vin, err)
	}
	return nil
}
