// Package carstore is the bbolt file of one vehicle-sim process: every car's credentials,
// state, telemetry sequence, replay cache, whitelist and trust set, and the journal of its
// local-link decisions, a bucket per car. Writes share fsyncs (group commit). It knows nothing
// of what a car does: the car's state is the car's own JSON.
package carstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"telematics/pkg/groupcommit"
	"telematics/pkg/protocol"
)

// Bucket layout of the vehicle-sim store (one bbolt file per vehicle-sim process):
//
//	meta                     schema → "2"
//	cars/                    one nested bucket per car, named by VIN
//	  {VIN}/
//	    creds                JSON protocol.Credentials (secret: the token and the local-link key)
//	    state                the car's state as the car encodes it (JSON vehicle.State: doors,
//	                         trunk, climate, charging, position, SoC, …)
//	    seq                  uint64 big-endian: telemetry sequence high-water mark (see vehicle.Car)
//	    replay/              executed command ids, both paths: id → int64 big-endian expires_at
//	    whitelist            JSON protocol.Envelope: the whitelist exactly as the gateway signed it
//	    whitelist_version    uint64 big-endian: its version (a car accepts only higher ones)
//	    trust                JSON []string, base64url DER: the gateway keys the car trusts, set by
//	                         the last whitelist that carried a trust list; absent: the gateway_key
//	                         of the credentials
//	    journal/             local-link decisions the gateway has not yet acknowledged on
//	                         v/{vin}/events/ack: seq (uint64 big-endian) → JSON
//	                         protocol.VehicleEvent; the bucket's own sequence is the last seq
//	                         given out, so a seq is never reused
//	    journal_summary/     refusals counted while the journal was full, one entry per reason
//	                         and key id: reason "/" key id → JSON protocol.VehicleEvent with
//	                         Count; moved into journal/ (with a seq) as room frees up
//
// Schema 2 only adds to schema 1 (whitelist, trust, journal), so a schema-1 file is upgraded in
// place when it is opened.
var (
	bucketMeta      = []byte("meta")
	bucketCars      = []byte("cars")
	bucketReplay    = []byte("replay")
	bucketJournal   = []byte("journal")
	bucketSummary   = []byte("journal_summary")
	keySchema       = []byte("schema")
	keyCreds        = []byte("creds")
	keyState        = []byte("state")
	keySeq          = []byte("seq")
	keyWhitelist    = []byte("whitelist")
	keyWhitelistVer = []byte("whitelist_version")
	keyTrust        = []byte("trust")
)

// schemaVersion is the layout above. A store written by a newer layout is refused rather than
// misread; schemaUpgradable lists the older layouts this build upgrades in place.
const schemaVersion = "2"

var schemaUpgradable = []string{"1"}

// File is the name of the bbolt file inside a vehicle-sim data directory.
const File = "vehicle-sim.db"

// lockTimeout bounds how long Open waits for another process's lock on the file.
const lockTimeout = time.Second

// Sentinel errors of the store.
var (
	// ErrLocked means another process (another vehicle-sim) has the store file open.
	ErrLocked = errors.New("store is in use by another process")
	// ErrDuplicate means a command id is already in a car's replay cache: it was executed.
	ErrDuplicate = errors.New("command already executed")
	// ErrStaleWhitelist means a whitelist is not newer than the one the car stored.
	ErrStaleWhitelist = errors.New("whitelist is not newer than the stored one")
)

// lockedError is ErrLocked with the directory, worded for the person who started the
// second process.
type lockedError struct{ dir string }

func (e *lockedError) Error() string {
	return fmt.Sprintf("data dir %s is in use by another vehicle-sim process: stop that one, or give this one another data dir", e.dir)
}

func (e *lockedError) Is(target error) bool { return target == ErrLocked }

// Store is the bbolt file that holds every car of one vehicle-sim process: a bucket per car.
// It is safe for concurrent use; writes go through a group committer, so that many cars share
// an fsync.
type Store struct {
	db   *bolt.DB
	path string
	// commit shares each fsync among the cars writing at that moment (group commit): a lone
	// command commits at once, a busy fleet in batches.
	commit *groupcommit.Committer
}

// Open opens (creating if needed) the store file at path. If another process holds the
// file, it fails within about a second with an error wrapping ErrLocked.
func Open(path string) (*Store, error) {
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
		case v == nil || slices.Contains(schemaUpgradable, string(v)):
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
	return &Store{db: db, path: path, commit: groupcommit.New(db)}, nil
}

// Unsynced turns fsync off for the rest of the store's life; call it before the store is used.
// For fuzzers only, which look for logic errors, not for durability: without fsync an input
// costs microseconds instead of milliseconds. A car's store is always synced.
func (s *Store) Unsynced() { s.db.NoSync = true }

// Path is the store's file name.
func (s *Store) Path() string { return s.path }

// Close closes the file. It is idempotent.
func (s *Store) Close() error {
	s.commit.Close()
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
	return s.commit.Update(func(tx *bolt.Tx) error {
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
