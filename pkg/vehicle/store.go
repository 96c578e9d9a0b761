package vehicle

import (
	"bytes"
	"encoding/binary"
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
//	    creds                JSON protocol.Credentials
//	    state                JSON State (doors, trunk, climate, charging, position, SoC, …)
//	    seq                  uint64 big-endian: telemetry sequence high-water mark (see Car)
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
	// ErrStaleWhitelist means a whitelist is not newer than the one the car stored.
	ErrStaleWhitelist = errors.New("whitelist is not newer than the stored one")
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

// lockedError is ErrStoreLocked with the directory, worded for the person who started the
// second process.
type lockedError struct{ dir string }

func (e *lockedError) Error() string {
	return fmt.Sprintf("data dir %s is in use by another vehicle-sim process: stop that one, or give this one another data dir", e.dir)
}

func (e *lockedError) Is(target error) bool { return target == ErrStoreLocked }

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
	err = s.commit.Update(func(tx *bolt.Tx) error {
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
	// State is the state the command left the car in.
	State State
	// Event, when set (local-link commands), is appended to the journal; its Seq is assigned.
	Event *protocol.VehicleEvent
}

// CommitCommand records that command c.ID was executed, writes the state it left the car in
// and, if c.Event is set, appends it to the journal, in one durable transaction. It fails with
// ErrDuplicate (and writes nothing) if the id is already in the replay cache.
func (s *Store) CommitCommand(vin string, c Commit) error {
	doc, err := json.Marshal(c.State)
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", vin, err)
	}
	idKey := []byte(c.ID)
	exp := binary.BigEndian.AppendUint64(nil, uint64(c.ExpiresAtMs))
	cutoffMs := c.NowMs - ReplaySlack.Milliseconds()
	// Batch may run this twice (after a rollback caused by another car's function): it reads
	// and writes only through tx, so a second run sees exactly what the first saw.
	err = s.commit.Update(func(tx *bolt.Tx) error {
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

// KeyRecord is what a car keeps of its digital keys.
type KeyRecord struct {
	// Envelope is the whitelist exactly as the gateway signed it.
	Envelope protocol.Envelope
	// Version is the whitelist's version.
	Version uint64
	// Trust is the set of gateway keys (base64url DER) the car trusts. Empty: the gateway_key
	// of the car's credentials.
	Trust []string
}

// LoadKeys returns the car's stored whitelist and trust set; found is false when the car has
// never stored a whitelist.
func (s *Store) LoadKeys(vin string) (rec KeyRecord, found bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil {
			return nil
		}
		if raw := b.Get(keyTrust); raw != nil {
			if err := json.Unmarshal(raw, &rec.Trust); err != nil {
				return fmt.Errorf("trust: %w", err)
			}
		}
		raw := b.Get(keyWhitelist)
		if raw == nil {
			return nil
		}
		if err := json.Unmarshal(raw, &rec.Envelope); err != nil {
			return fmt.Errorf("whitelist: %w", err)
		}
		if v := b.Get(keyWhitelistVer); len(v) == 8 {
			rec.Version = binary.BigEndian.Uint64(v)
		}
		found = true
		return nil
	})
	if err != nil {
		return KeyRecord{}, false, fmt.Errorf("load keys of %s: %w", vin, err)
	}
	return rec, found, nil
}

// SaveKeys durably stores a whitelist, its version and, when rec.Trust is not empty, the new
// trust set, in one transaction. It fails with ErrStaleWhitelist (and writes nothing) unless
// rec.Version is higher than the stored version: no rollback, even between two cars' goroutines
// racing on one VIN.
func (s *Store) SaveKeys(vin string, rec KeyRecord) error {
	env, err := json.Marshal(rec.Envelope)
	if err != nil {
		return fmt.Errorf("encode whitelist of %s: %w", vin, err)
	}
	var trust []byte
	if len(rec.Trust) > 0 {
		if trust, err = json.Marshal(rec.Trust); err != nil {
			return fmt.Errorf("encode trust of %s: %w", vin, err)
		}
	}
	ver := binary.BigEndian.AppendUint64(nil, rec.Version)
	// Idempotent: the version check reads through tx, and the puts are the same on a rerun.
	err = s.commit.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketCars).CreateBucketIfNotExists([]byte(vin))
		if err != nil {
			return err
		}
		if v := b.Get(keyWhitelistVer); len(v) == 8 && binary.BigEndian.Uint64(v) >= rec.Version {
			return ErrStaleWhitelist
		}
		if err := b.Put(keyWhitelist, env); err != nil {
			return err
		}
		if err := b.Put(keyWhitelistVer, ver); err != nil {
			return err
		}
		if trust != nil {
			return b.Put(keyTrust, trust)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save whitelist %d of %s: %w", rec.Version, vin, err)
	}
	return nil
}

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
