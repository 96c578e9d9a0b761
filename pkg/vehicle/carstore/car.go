package carstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/pkg/protocol"
)

// ReplaySlack is how long past a command's expires_at its id stays in a car's replay cache. A
// car refuses expired commands anyway, so the id is only needed until expiry; the slack covers
// the car's clock stepping backwards (NTP correction) by up to this much.
const ReplaySlack = 2 * time.Minute

// CarRecord is what the store keeps of a car besides its credentials and replay cache.
type CarRecord struct {
	// State is the car's state as the car encoded it.
	State json.RawMessage
	// SeqHigh is the telemetry sequence high-water mark: no message with a higher seq has been
	// published.
	SeqHigh uint64
}

// LoadCar returns the car's record; found is false when the car has no state yet (a new car).
func (s *Store) LoadCar(vin string) (rec CarRecord, found bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil {
			return nil
		}
		if raw := b.Get(keyState); raw != nil {
			rec.State = bytes.Clone(raw) // raw is valid only during the transaction
			found = true
		}
		if raw := b.Get(keySeq); len(raw) == 8 {
			rec.SeqHigh = binary.BigEndian.Uint64(raw)
		}
		return nil
	})
	if err != nil {
		return CarRecord{}, false, fmt.Errorf("load car %s: %w", vin, err)
	}
	return rec, found, nil
}

// SaveCar durably writes the car's state and sequence high-water mark.
func (s *Store) SaveCar(vin string, rec CarRecord) error {
	state := rec.State
	seq := binary.BigEndian.AppendUint64(nil, rec.SeqHigh)
	// Idempotent: the same two puts whether Batch runs it once or twice.
	err := s.commit.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketCars).CreateBucketIfNotExists([]byte(vin))
		if err != nil {
			return err
		}
		if err := b.Put(keyState, state); err != nil {
			return err
		}
		return b.Put(keySeq, seq)
	})
	if err != nil {
		return fmt.Errorf("save car %s: %w", vin, err)
	}
	return nil
}

// Commit is what executing one command writes, in one transaction.
type Commit struct {
	// ID is the command id that enters the replay cache; ExpiresAtMs its expiry (unix ms).
	ID          string
	ExpiresAtMs int64
	// NowMs is the car's clock: replay entries whose expires_at+ReplaySlack lies before it are
	// pruned.
	NowMs int64
	// State is the state the command left the car in, as the car encoded it.
	State json.RawMessage
	// Event, when set (local-link commands), is appended to the journal; its Seq is assigned.
	Event *protocol.VehicleEvent
}

// CommitCommand records that command c.ID was executed, writes the state it left the car in
// and, if c.Event is set, appends it to the journal, in one durable transaction. It fails with
// ErrDuplicate (and writes nothing) if the id is already in the replay cache.
func (s *Store) CommitCommand(vin string, c Commit) error {
	doc := c.State
	idKey := []byte(c.ID)
	exp := binary.BigEndian.AppendUint64(nil, uint64(c.ExpiresAtMs))
	cutoffMs := c.NowMs - ReplaySlack.Milliseconds()
	// Batch may run this twice (after a rollback caused by another car's function): it reads
	// and writes only through tx, so a second run sees exactly what the first saw.
	err := s.commit.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketCars).CreateBucketIfNotExists([]byte(vin))
		if err != nil {
			return err
		}
		replay, err := b.CreateBucketIfNotExists(bucketReplay)
		if err != nil {
			return err
		}
		if replay.Get(idKey) != nil {
			return ErrDuplicate
		}
		if err := pruneReplay(replay, cutoffMs); err != nil {
			return err
		}
		if err := replay.Put(idKey, exp); err != nil {
			return err
		}
		if c.Event != nil {
			if err := appendJournal(b, *c.Event); err != nil {
				return err
			}
		}
		return b.Put(keyState, doc)
	})
	if err != nil {
		if errors.Is(err, ErrDuplicate) {
			return fmt.Errorf("car %s command %s: %w", vin, c.ID, ErrDuplicate)
		}
		return fmt.Errorf("commit command %s of %s: %w", c.ID, vin, err)
	}
	return nil
}

// pruneReplay deletes the entries that expired before cutoffMs. A car accepts expiries at most
// protocol.MaxCommandAheadMs ahead, so the bucket holds at most about a minute of ids.
func pruneReplay(replay *bolt.Bucket, cutoffMs int64) error {
	var stale [][]byte
	c := replay.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(v) != 8 || int64(binary.BigEndian.Uint64(v)) < cutoffMs {
			stale = append(stale, bytes.Clone(k))
		}
	}
	for _, k := range stale {
		if err := replay.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Executed reports whether id is in the car's replay cache.
func (s *Store) Executed(vin, id string) (bool, error) {
	var found bool
	err := s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil {
			return nil
		}
		if r := b.Bucket(bucketReplay); r != nil {
			found = r.Get([]byte(id)) != nil
		}
		return nil
	})
	return found, err
}

// ReplayLen is the number of ids in the car's replay cache.
func (s *Store) ReplayLen(vin string) (int, error) {
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil {
			return nil
		}
		if r := b.Bucket(bucketReplay); r != nil {
			n = r.Stats().KeyN
		}
		return nil
	})
	return n, err
}
