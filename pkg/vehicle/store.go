package vehicle

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"telematics/pkg/protocol"
)

// Bucket layout of the vehicle-sim store (one bbolt file per vehicle-sim process):
//
//	meta                     schema → "1"
//	cars/                    one nested bucket per car, named by VIN
//	  {VIN}/
//	    creds                JSON protocol.Credentials
//	    state                JSON State (doors, trunk, climate, charging, position, SoC, …)
//	    seq                  uint64 big-endian: telemetry sequence high-water mark (see Car)
//	    replay/              executed command ids: id → int64 big-endian expires_at (unix ms)
//
// Later issues (digital keys) add the whitelist and the local-link journal beside replay/.
var (
	bucketMeta   = []byte("meta")
	bucketCars   = []byte("cars")
	bucketReplay = []byte("replay")
	keySchema    = []byte("schema")
	keyCreds     = []byte("creds")
	keyState     = []byte("state")
	keySeq       = []byte("seq")
)

// schemaVersion is the layout above. A store written by a newer layout is refused rather than
// misread.
const schemaVersion = "1"

// StoreFile is the name of the bbolt file inside a vehicle-sim data directory.
const StoreFile = "vehicle-sim.db"

// ReplaySlack is how long past a command's expires_at its id stays in a car's replay cache. A
// car refuses expired commands anyway, so the id is only needed until expiry; the slack covers
// the car's clock stepping backwards (NTP correction) by up to this much.
const ReplaySlack = 2 * time.Minute

// lockTimeout bounds how long Open waits for another process's lock on the file.
const lockTimeout = time.Second

// Sentinel errors of the store.
var (
	// ErrStoreLocked means another process (another vehicle-sim) has the store file open.
	ErrStoreLocked = errors.New("store is in use by another process")
	// ErrDuplicate means a command id is already in a car's replay cache: it was executed.
	ErrDuplicate = errors.New("command already executed")
)

// lockedError is ErrStoreLocked with the directory, worded for the person who started the
// second process.
type lockedError struct{ dir string }

func (e *lockedError) Error() string {
	return fmt.Sprintf("data dir %s is in use by another vehicle-sim process: stop that one, or give this one another data dir", e.dir)
}

func (e *lockedError) Is(target error) bool { return target == ErrStoreLocked }

// Store is the bbolt file that holds every car of one vehicle-sim process: a bucket per car.
// It is safe for concurrent use; writes go through db.Batch so that many cars share an fsync.
type Store struct {
	db   *bolt.DB
	path string
}

// OpenStore opens (creating if needed) the store file at path. If another process holds the
// file, it fails within about a second with an error wrapping ErrStoreLocked.
func OpenStore(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir for %q: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, &lockedError{dir: filepath.Dir(path)}
		}
		return nil, fmt.Errorf("open vehicle store %q: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keySchema); {
		case v == nil:
			if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("store schema %q, this build reads %q", v, schemaVersion)
		}
		_, err = tx.CreateBucketIfNotExists(bucketCars)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise vehicle store %q: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Path is the store's file name.
func (s *Store) Path() string { return s.path }

// Close closes the file. It is idempotent.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil && !errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return err
	}
	return nil
}

// carBucket returns the bucket of vin, or nil.
func carBucket(tx *bolt.Tx, vin string) *bolt.Bucket {
	return tx.Bucket(bucketCars).Bucket([]byte(vin))
}

// SaveCredentials stores (or replaces) the credentials of each car, creating its bucket. All
// are written in one transaction.
func (s *Store) SaveCredentials(creds ...protocol.Credentials) error {
	docs := make([][]byte, len(creds))
	for i, c := range creds {
		if !protocol.ValidVIN(c.VIN) {
			return fmt.Errorf("credentials %d: malformed vin %q", i, c.VIN)
		}
		b, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode credentials of %s: %w", c.VIN, err)
		}
		docs[i] = b
	}
	return s.db.Batch(func(tx *bolt.Tx) error {
		cars := tx.Bucket(bucketCars)
		for i, c := range creds {
			b, err := cars.CreateBucketIfNotExists([]byte(c.VIN))
			if err != nil {
				return err
			}
			if err := b.Put(keyCreds, docs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Credentials returns the credentials of every car in the store, ordered by VIN.
func (s *Store) Credentials() ([]protocol.Credentials, error) {
	var out []protocol.Credentials
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCars).ForEachBucket(func(vin []byte) error {
			raw := tx.Bucket(bucketCars).Bucket(vin).Get(keyCreds)
			if raw == nil {
				return nil
			}
			var c protocol.Credentials
			// Unmarshal copies: nothing of raw outlives the transaction.
			if err := json.Unmarshal(raw, &c); err != nil {
				return fmt.Errorf("credentials of %s: %w", vin, err)
			}
			out = append(out, c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VIN < out[j].VIN })
	return out, nil
}

// CarRecord is what the store keeps of a car besides its credentials and replay cache.
type CarRecord struct {
	State State
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
			if err := json.Unmarshal(raw, &rec.State); err != nil {
				return fmt.Errorf("state: %w", err)
			}
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
	state, err := json.Marshal(rec.State)
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", vin, err)
	}
	seq := binary.BigEndian.AppendUint64(nil, rec.SeqHigh)
	// Idempotent: the same two puts whether Batch runs it once or twice.
	err = s.db.Batch(func(tx *bolt.Tx) error {
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

// CommitCommand records that command id was executed and writes the state it left the car in,
// in one durable transaction. It fails with ErrDuplicate (and writes nothing) if id is already
// in the replay cache. Entries whose expires_at+ReplaySlack lies before nowMs are pruned.
func (s *Store) CommitCommand(vin, id string, expiresAtMs, nowMs int64, state State) error {
	doc, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", vin, err)
	}
	idKey := []byte(id)
	exp := binary.BigEndian.AppendUint64(nil, uint64(expiresAtMs))
	cutoffMs := nowMs - ReplaySlack.Milliseconds()
	// Batch may run this twice (after a rollback caused by another car's function): it reads
	// and writes only through tx, so a second run sees exactly what the first saw.
	err = s.db.Batch(func(tx *bolt.Tx) error {
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
		return b.Put(keyState, doc)
	})
	if err != nil {
		if errors.Is(err, ErrDuplicate) {
			return fmt.Errorf("car %s command %s: %w", vin, id, ErrDuplicate)
		}
		return fmt.Errorf("commit command %s of %s: %w", id, vin, err)
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
