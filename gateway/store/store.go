// Package store is the gateway's source of truth: users, vehicles and their user assignments,
// the vehicle twin, the ids of commands already seen, and a schema version, kept in a
// transactional key-value store (gateway/kv): the gateway's bbolt file by default, or etcd for
// replicas that share their state. The audit log, the 2FA state and the key registry live in
// the same store (packages audit, twofa and keys), in transactions they share through Update.
package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
	"telematics/pkg/protocol"
)

// SchemaVersion is the layout this build reads and writes.
const SchemaVersion = 1

// Sentinel errors.
var (
	// ErrNotFound means the user or vehicle does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means a user or vehicle with that name already exists.
	ErrExists = errors.New("already exists")
	// ErrLocked means another process holds the database file.
	ErrLocked = errors.New("database is in use by another process")
)

var (
	bucketMeta     = []byte("meta")
	bucketUsers    = []byte("users")
	bucketVehicles = []byte("vehicles")
	bucketTwin     = []byte("twin")
	bucketCmdIDs   = []byte("cmdids")
	keySchema      = []byte("schema_version")
)

// CachedBuckets are this package's buckets that a gateway replica keeps a watched copy of
// (etcdkv.Options.Cache): those every command's decision reads.
var CachedBuckets = []string{string(bucketUsers), string(bucketVehicles), string(bucketCmdIDs)}

// fileBuckets are created when a bbolt file is opened: kv makes a bucket when it is first
// written, and a build from before kv expects every bucket of the file to exist.
var fileBuckets = []string{"meta", "users", "vehicles", "twin", "cmdids", "audit",
	"keys", "shares", "whitelists", "journal", "totp", "totp_lockout", "totp_meta"}

// Store is the gateway's state on a kv.Store.
type Store struct {
	kv   kv.Store
	file *bolt.DB // the bbolt file under kv, nil on etcd
}

// Options tune Open.
type Options struct {
	// NoSync skips fsync: for fuzz harnesses only, which look for logic errors, not
	// durability.
	NoSync bool
}

// Open opens (or creates) the gateway database at path. A second process on the same file gets
// ErrLocked after about a second instead of waiting forever.
func Open(path string) (*Store, error) { return OpenFile(path, Options{}) }

// OpenFile is Open with options.
func OpenFile(path string, o Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir for %q: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open gateway store %q: %w (is another gateway running on this data dir?)", path, ErrLocked)
		}
		return nil, fmt.Errorf("open gateway store %q: %w", path, err)
	}
	db.NoSync = o.NoSync
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range fileBuckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize gateway store %q: %w", path, err)
	}
	s, err := openKV(boltkv.New(db))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize gateway store %q: %w", path, err)
	}
	s.file = db
	return s, nil
}

// OpenKV serves the gateway's state from kvs (etcd: see etcdkv.Open), writing the schema
// version on first use and refusing another one. Close closes kvs.
func OpenKV(kvs kv.Store) (*Store, error) {
	s, err := openKV(kvs)
	if err != nil {
		return nil, err
	}
	if err := s.buildUserIndex(); err != nil {
		kvs.Close()
		return nil, fmt.Errorf("index users' cars: %w", err)
	}
	return s, nil
}

// openKV is OpenKV without the shared store's user index (a bbolt file keeps none).
func openKV(kvs kv.Store) (*Store, error) {
	err := kvs.Update(context.Background(), func(tx kv.Tx) error {
		v, err := tx.Get(bucketMeta, keySchema)
		if err != nil {
			return err
		}
		if v != nil {
			if len(v) != 8 {
				return fmt.Errorf("schema version of %d bytes", len(v))
			}
			if got := binary.BigEndian.Uint64(v); got != SchemaVersion {
				return fmt.Errorf("schema version %d, this build reads %d", got, SchemaVersion)
			}
			return nil
		}
		return tx.Put(bucketMeta, keySchema, binary.BigEndian.AppendUint64(nil, SchemaVersion))
	})
	if err != nil {
		kvs.Close()
		return nil, fmt.Errorf("initialize gateway store: %w", err)
	}
	return &Store{kv: kvs}, nil
}

// KV is the store the gateway's state lives in, for the packages that keep theirs next to it
// (audit, twofa, keys).
func (s *Store) KV() kv.Store { return s.kv }

// Shared reports whether other gateway replicas may write to the store (etcd): what a
// replica caches of it must then be read again before it is relied on.
func (s *Store) Shared() bool { return s.file == nil }

// Update runs fn in a read-write transaction and returns once it is durable. On bbolt,
// concurrent writers share a commit. fn may run more than once (see package kv): it must
// start from fresh state on each run and do its side effects after Update returns, or in
// tx.OnCommit.
func (s *Store) Update(ctx context.Context, fn func(kv.Tx) error) error { return s.kv.Update(ctx, fn) }

// UpdateLater runs fn in a read-write transaction without waiting for it to be durable: on
// bbolt it joins the next Update's group commit, or commits within a second
// (groupcommit.MaxLaterDelay) when no Update comes, and UpdateLater returns once it is queued;
// then, if not nil, gets the outcome when the commit is durable or failed, on the committing
// goroutine (it must be quick). On a store without group commit (etcd) fn commits before
// UpdateLater returns, and then is called first. Close commits what was queued before it; a
// crash loses what had not committed yet. fn may run more than once, as with Update.
func (s *Store) UpdateLater(fn func(kv.Tx) error, then func(error)) {
	if l, ok := s.kv.(interface {
		UpdateLater(fn func(kv.Tx) error, then func(error))
	}); ok {
		l.UpdateLater(fn, then)
		return
	}
	err := s.kv.Update(context.Background(), fn)
	if then != nil {
		then(err)
	}
}

// View runs fn in a read-only transaction that sees one snapshot.
func (s *Store) View(ctx context.Context, fn func(kv.Tx) error) error { return s.kv.View(ctx, fn) }

// Ping reads the schema version: an error means the store cannot be reached (readiness).
func (s *Store) Ping(ctx context.Context) error {
	return s.kv.View(ctx, func(tx kv.Tx) error {
		_, err := tx.Get(bucketMeta, keySchema)
		return err
	})
}

// Close waits for queued writes and closes the store.
func (s *Store) Close() error {
	err := s.kv.Close()
	if s.file != nil {
		if cerr := s.file.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// update is Update without a caller's context: the store's own time bound applies (etcd).
func (s *Store) update(fn func(kv.Tx) error) error { return s.kv.Update(context.Background(), fn) }

func (s *Store) view(fn func(kv.Tx) error) error { return s.kv.View(context.Background(), fn) }

// User is an account. The password is stored only as an argon2id hash.
type User struct {
	Name         string `json:"name"`
	PasswordHash string `json:"password_hash"`
	CreatedMs    int64  `json:"created"`
	// Disabled users cannot log in and their tokens are refused.
	Disabled bool `json:"disabled,omitempty"`
	// TokenGen is the generation of the user's app tokens (token.Claims.Gen): a token of
	// another generation is refused. NextTokenGen moves it on.
	TokenGen uint64 `json:"token_gen,omitempty"`
}

// AddUser creates a user; ErrExists if the name is taken.
func (s *Store) AddUser(u User) error {
	b, err := json.Marshal(u)
	if err != nil {
		return err
	}
	return s.update(func(tx kv.Tx) error {
		existing, err := tx.Get(bucketUsers, []byte(u.Name))
		if err != nil {
			return err
		}
		if existing != nil {
			// Update may run this function twice: a second run finds our own record.
			if string(existing) == string(b) {
				return nil
			}
			return fmt.Errorf("user %q: %w", u.Name, ErrExists)
		}
		return tx.Put(bucketUsers, []byte(u.Name), b)
	})
}

// GetUser returns a user or ErrNotFound.
func (s *Store) GetUser(name string) (User, error) {
	var u User
	err := s.view(func(tx kv.Tx) error {
		var err error
		u, err = GetUserTx(tx, name)
		return err
	})
	return u, err
}

// GetUserTx is GetUser inside tx, for a decision that commits with what it read.
func GetUserTx(tx kv.Tx, name string) (User, error) {
	var u User
	v, err := tx.Get(bucketUsers, []byte(name))
	if err != nil {
		return u, err
	}
	if v == nil {
		return u, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	return u, json.Unmarshal(v, &u)
}

// Vehicle is a car the gateway knows, with the users who may command it and their roles.
type Vehicle struct {
	VIN       string                   `json:"vin"`
	CreatedMs int64                    `json:"created"`
	Users     map[string]protocol.Role `json:"users,omitempty"`
	// TokenID is the jti of the car's current access token; the embedded broker refuses the
	// car's older tokens (credentials reissued). Empty for cars provisioned before it was
	// recorded: any valid token of theirs is accepted.
	TokenID string `json:"token_id,omitempty"`
	// CertSerial is the serial (hex) of the device certificate issued with that token, if
	// any. The certificate names the token's id, so retiring the token retires it too.
	CertSerial string `json:"cert_serial,omitempty"`
	// Reissued is set once the car's credentials were reissued: a broker that runs apart from
	// the gateway is told its current token (protocol.TokenList).
	Reissued bool `json:"reissued,omitempty"`
	// DecommissionedMs is when the car was decommissioned (0: in service): it has no users and
	// no keys, and nobody can be given a role on it.
	DecommissionedMs int64 `json:"decommissioned,omitempty"`
	// RetiredMs is when a decommissioned car's credentials were retired (0: not yet): from
	// then on the broker refuses every token of the car.
	RetiredMs int64 `json:"credentials_retired,omitempty"`
}

// AddVehicles creates the given vehicles in one transaction; ErrExists if any exists already,
// in which case none is added. On a shared store (etcd, whose transactions carry at most
// --max-txn-ops keys) more than vehicleBatch vehicles are checked in one snapshot and added in
// transactions of vehicleBatch, each checking its vehicles again: should another replica add
// one of them in between, the batches before it stay added.
func (s *Store) AddVehicles(vs []Vehicle) error {
	encoded := make([][]byte, len(vs))
	for i, v := range vs {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		encoded[i] = b
	}
	add := func(tx kv.Tx, from, to int, write bool) error {
		for i := from; i < to; i++ {
			old, err := tx.Get(bucketVehicles, []byte(vs[i].VIN))
			if err != nil {
				return err
			}
			if old != nil {
				return fmt.Errorf("vehicle %s: %w", vs[i].VIN, ErrExists)
			}
			if write {
				if err := tx.Put(bucketVehicles, []byte(vs[i].VIN), encoded[i]); err != nil {
					return err
				}
				if err := indexRolesTx(tx, vs[i].VIN, nil, vs[i].Users); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if !s.Shared() || len(vs) <= vehicleBatch {
		return s.update(func(tx kv.Tx) error { return add(tx, 0, len(vs), true) })
	}
	if err := s.view(func(tx kv.Tx) error { return add(tx, 0, len(vs), false) }); err != nil {
		return err
	}
	for from := 0; from < len(vs); from += vehicleBatch {
		to := min(from+vehicleBatch, len(vs))
		if err := s.update(func(tx kv.Tx) error { return add(tx, from, to, true) }); err != nil {
			return err
		}
	}
	return nil
}

// vehicleBatch bounds the vehicles one transaction adds on a shared store: each is a compare
// and a write, and etcd takes 128 of each.
const vehicleBatch = 50

// GetVehicle returns a vehicle or ErrNotFound.
func (s *Store) GetVehicle(vin string) (Vehicle, error) {
	var v Vehicle
	err := s.view(func(tx kv.Tx) error {
		var err error
		v, err = GetVehicleTx(tx, vin)
		return err
	})
	return v, err
}

// ListVehicles returns every vehicle, ordered by VIN.
func (s *Store) ListVehicles() ([]Vehicle, error) {
	var out []Vehicle
	err := s.view(func(tx kv.Tx) error {
		return tx.Scan(bucketVehicles, nil, nil, func(_, b []byte) error {
			var v Vehicle
			if err := json.Unmarshal(b, &v); err != nil {
				return err
			}
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

// SetVehicleTokenID records the jti of vin's new access token (credentials reissued).
func (s *Store) SetVehicleTokenID(vin, jti string) error {
	return s.update(func(tx kv.Tx) error {
		return updateVehicle(tx, vin, func(v *Vehicle) { v.TokenID, v.Reissued = jti, true })
	})
}

// SetVehicleCredentials records the jti of vin's new access token and the serial of the
// device certificate issued with it ("" for none) (credentials reissued).
func (s *Store) SetVehicleCredentials(vin, jti, certSerial string) error {
	return s.update(func(tx kv.Tx) error {
		return updateVehicle(tx, vin, func(v *Vehicle) { v.TokenID, v.CertSerial, v.Reissued = jti, certSerial, true })
	})
}

// Assign gives user the role on vehicle vin (replacing any previous role). For provisioning
// and tests only: the running gateway changes roles through package keys, which rewrites the
// user's keys and the car's whitelist in the same transaction.
func (s *Store) Assign(vin, user string, role protocol.Role) error {
	return s.update(func(tx kv.Tx) error { return AssignTx(tx, vin, user, role) })
}

// AssignTx is Assign inside tx, for a change that must commit together with it.
func AssignTx(tx kv.Tx, vin, user string, role protocol.Role) error {
	u, err := tx.Get(bucketUsers, []byte(user))
	if err != nil {
		return err
	}
	if u == nil {
		return fmt.Errorf("user %q: %w", user, ErrNotFound)
	}
	return updateVehicle(tx, vin, func(v *Vehicle) {
		if v.Users == nil {
			v.Users = map[string]protocol.Role{}
		}
		v.Users[user] = role
	})
}

// UnassignTx removes user's role on vin inside tx (nothing to do when they hold none).
func UnassignTx(tx kv.Tx, vin, user string) error {
	return updateVehicle(tx, vin, func(v *Vehicle) { delete(v.Users, user) })
}

// GetVehicleTx is GetVehicle inside tx, for a decision that must see what tx writes.
func GetVehicleTx(tx kv.Tx, vin string) (Vehicle, error) {
	var v Vehicle
	b, err := tx.Get(bucketVehicles, []byte(vin))
	if err != nil {
		return v, err
	}
	if b == nil {
		return v, fmt.Errorf("vehicle %s: %w", vin, ErrNotFound)
	}
	return v, json.Unmarshal(b, &v)
}

// UpdateVehicleTx applies change to vin's record inside tx; ErrNotFound for an unknown vin.
func UpdateVehicleTx(tx kv.Tx, vin string, change func(*Vehicle)) error {
	return updateVehicle(tx, vin, change)
}

// UserExistsTx reports whether user exists, inside tx.
func UserExistsTx(tx kv.Tx, user string) (bool, error) {
	v, err := tx.Get(bucketUsers, []byte(user))
	return v != nil, err
}

// updateVehicle reads vin's record in tx, applies change and writes it back; ErrNotFound for an
// unknown vin.
func updateVehicle(tx kv.Tx, vin string, change func(*Vehicle)) error {
	b, err := tx.Get(bucketVehicles, []byte(vin))
	if err != nil {
		return err
	}
	if b == nil {
		return fmt.Errorf("vehicle %s: %w", vin, ErrNotFound)
	}
	var v Vehicle
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	before := maps.Clone(v.Users)
	change(&v)
	if err := indexRolesTx(tx, vin, before, v.Users); err != nil {
		return err
	}
	nb, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(bucketVehicles, []byte(vin), nb)
}

// Twin is a car's last known state: online or offline from its status (and will), and its
// last telemetry.
type Twin struct {
	VIN          string         `json:"vin"`
	Status       string         `json:"status,omitempty"`
	StatusMs     int64          `json:"status_ts,omitempty"`
	TelemetryMs  int64          `json:"telemetry_ts,omitempty"`
	TelemetrySeq uint64         `json:"telemetry_seq,omitempty"`
	Signals      map[string]any `json:"signals,omitempty"`
}

// PutTwins writes twins (the gateway flushes its in-memory twin periodically, so telemetry at
// fleet rates costs one commit per flush, not per message): in one transaction on bbolt, in
// transactions of at most txnBatch twins on a shared store (etcd's --max-txn-ops).
func (s *Store) PutTwins(ts []Twin) error {
	batch := len(ts)
	if s.Shared() {
		batch = txnBatch
	}
	for len(ts) > 0 {
		part := ts[:min(len(ts), batch)]
		ts = ts[len(part):]
		err := s.update(func(tx kv.Tx) error {
			for _, t := range part {
				b, err := json.Marshal(t)
				if err != nil {
					return err
				}
				if err := tx.Put(bucketTwin, []byte(t.VIN), b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// LoadTwins returns every stored twin.
func (s *Store) LoadTwins() ([]Twin, error) {
	var out []Twin
	err := s.view(func(tx kv.Tx) error {
		return tx.Scan(bucketTwin, nil, nil, func(_, b []byte) error {
			var t Twin
			if err := json.Unmarshal(b, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	return out, err
}

// SeenCommandIDs returns the remembered command ids that expire after nowMs, so a restarted
// gateway still refuses duplicates.
func (s *Store) SeenCommandIDs(nowMs int64) (map[string]int64, error) {
	out := map[string]int64{}
	err := s.view(func(tx kv.Tx) error {
		return tx.Scan(bucketCmdIDs, nil, nil, func(k, v []byte) error {
			if len(v) == 8 {
				if exp := int64(binary.BigEndian.Uint64(v)); exp > nowMs {
					out[string(k)] = exp
				}
			}
			return nil
		})
	})
	return out, err
}

// PutCommandID records a command id in tx (the caller's audit transaction), remembered until
// untilMs.
func PutCommandID(tx kv.Tx, id string, untilMs int64) error {
	return tx.Put(bucketCmdIDs, []byte(id), binary.BigEndian.AppendUint64(nil, uint64(untilMs)))
}

// CommandIDTaken reports whether id is remembered in tx beyond nowMs (a command decided with
// it, here or by another replica sharing the store).
func CommandIDTaken(tx kv.Tx, id string, nowMs int64) (bool, error) {
	v, err := tx.Get(bucketCmdIDs, []byte(id))
	if err != nil || v == nil {
		return false, err
	}
	return len(v) == 8 && int64(binary.BigEndian.Uint64(v)) > nowMs, nil
}

// PruneCommandIDs forgets ids that expired before nowMs, and cuts down to maxUntilMs those
// remembered for longer than any command can live (ids that a gateway without that bound
// remembered until an expiry its sender chose).
func (s *Store) PruneCommandIDs(nowMs, maxUntilMs int64) (int, error) {
	// Found in one snapshot, changed in small transactions that look at each id again: an
	// etcd transaction carries at most a few hundred keys (kv.ErrTooLarge).
	// On a replica the candidates come from its watched copy of the ids (kv.ScanCandidates):
	// each is looked at again in its transaction.
	var todo [][]byte
	err := kv.ScanCandidates(context.Background(), s.kv, bucketCmdIDs, func(k, v []byte) error {
		if len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= nowMs || int64(binary.BigEndian.Uint64(v)) > maxUntilMs {
			todo = append(todo, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	total := 0
	for len(todo) > 0 {
		batch := todo[:min(len(todo), txnBatch)]
		todo = todo[len(batch):]
		var n int
		err := s.update(func(tx kv.Tx) error {
			n = 0 // Update may run this function again: set, not added to
			for _, k := range batch {
				v, err := tx.Get(bucketCmdIDs, k)
				if err != nil {
					return err
				}
				switch {
				case v == nil:
				case len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= nowMs:
					if err := tx.Delete(bucketCmdIDs, k); err != nil {
						return err
					}
					n++
				case int64(binary.BigEndian.Uint64(v)) > maxUntilMs:
					if err := tx.Put(bucketCmdIDs, k, binary.BigEndian.AppendUint64(nil, uint64(maxUntilMs))); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// txnBatch bounds the keys one transaction of a batched write changes: etcd's --max-txn-ops
// (128 by default) limits the compares and the writes of one transaction.
const txnBatch = 100

// UserNames returns all user names, sorted.
func (s *Store) UserNames() ([]string, error) {
	var out []string
	err := s.view(func(tx kv.Tx) error {
		return tx.Scan(bucketUsers, nil, nil, func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	sort.Strings(out)
	return out, err
}

// GetMeta reads a value of the meta bucket (nil if absent).
func (s *Store) GetMeta(key string) ([]byte, error) {
	var out []byte
	err := s.view(func(tx kv.Tx) error {
		v, err := tx.Get(bucketMeta, []byte(key))
		if v != nil {
			out = append([]byte(nil), v...)
		}
		return err
	})
	return out, err
}

// PutMeta writes a value of the meta bucket.
func (s *Store) PutMeta(key string, value []byte) error {
	return s.update(func(tx kv.Tx) error { return tx.Put(bucketMeta, []byte(key), value) })
}
