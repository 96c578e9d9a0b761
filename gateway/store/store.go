// Package store is the gateway's source of truth: one bbolt file holding users, vehicles and
// their user assignments, the vehicle twin, the ids of commands already seen, and a schema
// version. The audit log and the 2FA state live in the same file (packages audit and twofa).
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/pkg/groupcommit"
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

// Store wraps the gateway's bbolt file.
type Store struct {
	db     *bolt.DB
	commit *groupcommit.Committer
}

// Open opens (or creates) the gateway database at path. A second process on the same file gets
// ErrLocked after about a second instead of waiting forever.
func Open(path string) (*Store, error) {
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
	// The gateway writes everything through the group committer (Write). The packages that
	// can also run on their own (audit, twofa: their tests) write with db.Batch there, whose
	// default 10 ms wait for company would dominate their latency.
	db.MaxBatchDelay = 2 * time.Millisecond
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketUsers, bucketVehicles, bucketTwin, bucketCmdIDs} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keySchema); v != nil {
			if got := binary.BigEndian.Uint64(v); got != SchemaVersion {
				return fmt.Errorf("schema version %d, this build reads %d", got, SchemaVersion)
			}
			return nil
		}
		return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, SchemaVersion))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize gateway store %q: %w", path, err)
	}
	return &Store{db: db, commit: groupcommit.New(db)}, nil
}

// Write runs fn in a read-write transaction that concurrent writers share (group commit) and
// returns once it is durable. fn may run twice: keep it idempotent.
func (s *Store) Write(fn func(*bolt.Tx) error) error { return s.commit.Update(fn) }

// DB exposes the bbolt handle to the packages that keep their own buckets in the same file.
func (s *Store) DB() *bolt.DB { return s.db }

// Close waits for queued writes and closes the file.
func (s *Store) Close() error {
	s.commit.Close()
	return s.db.Close()
}

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
	return s.Write(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketUsers)
		if existing := bk.Get([]byte(u.Name)); existing != nil {
			// Batch may run this function twice: a second run finds our own record.
			if string(existing) == string(b) {
				return nil
			}
			return fmt.Errorf("user %q: %w", u.Name, ErrExists)
		}
		return bk.Put([]byte(u.Name), b)
	})
}

// GetUser returns a user or ErrNotFound.
func (s *Store) GetUser(name string) (User, error) {
	var u User
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUsers).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("user %q: %w", name, ErrNotFound)
		}
		return json.Unmarshal(v, &u)
	})
	return u, err
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
// in which case none is added.
func (s *Store) AddVehicles(vs []Vehicle) error {
	encoded := make([][]byte, len(vs))
	for i, v := range vs {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		encoded[i] = b
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketVehicles)
		for i, v := range vs {
			if bk.Get([]byte(v.VIN)) != nil {
				return fmt.Errorf("vehicle %s: %w", v.VIN, ErrExists)
			}
			if err := bk.Put([]byte(v.VIN), encoded[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// GetVehicle returns a vehicle or ErrNotFound.
func (s *Store) GetVehicle(vin string) (Vehicle, error) {
	var v Vehicle
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVehicles).Get([]byte(vin))
		if b == nil {
			return fmt.Errorf("vehicle %s: %w", vin, ErrNotFound)
		}
		return json.Unmarshal(b, &v)
	})
	return v, err
}

// ListVehicles returns every vehicle, ordered by VIN.
func (s *Store) ListVehicles() ([]Vehicle, error) {
	var out []Vehicle
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVehicles).ForEach(func(_, b []byte) error {
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
	return s.Write(func(tx *bolt.Tx) error {
		return updateVehicle(tx, vin, func(v *Vehicle) { v.TokenID, v.Reissued = jti, true })
	})
}

// SetVehicleCredentials records the jti of vin's new access token and the serial of the
// device certificate issued with it ("" for none) (credentials reissued).
func (s *Store) SetVehicleCredentials(vin, jti, certSerial string) error {
	return s.Write(func(tx *bolt.Tx) error {
		return updateVehicle(tx, vin, func(v *Vehicle) { v.TokenID, v.CertSerial, v.Reissued = jti, certSerial, true })
	})
}

// Assign gives user the role on vehicle vin (replacing any previous role). For provisioning
// and tests only: the running gateway changes roles through package keys, which rewrites the
// user's keys and the car's whitelist in the same transaction.
func (s *Store) Assign(vin, user string, role protocol.Role) error {
	return s.Write(func(tx *bolt.Tx) error { return AssignTx(tx, vin, user, role) })
}

// AssignTx is Assign inside tx, for a change that must commit together with it.
func AssignTx(tx *bolt.Tx, vin, user string, role protocol.Role) error {
	if tx.Bucket(bucketUsers).Get([]byte(user)) == nil {
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
func UnassignTx(tx *bolt.Tx, vin, user string) error {
	return updateVehicle(tx, vin, func(v *Vehicle) { delete(v.Users, user) })
}

// GetVehicleTx is GetVehicle inside tx, for a decision that must see what tx writes.
func GetVehicleTx(tx *bolt.Tx, vin string) (Vehicle, error) {
	var v Vehicle
	b := tx.Bucket(bucketVehicles).Get([]byte(vin))
	if b == nil {
		return v, fmt.Errorf("vehicle %s: %w", vin, ErrNotFound)
	}
	return v, json.Unmarshal(b, &v)
}

// UpdateVehicleTx applies change to vin's record inside tx; ErrNotFound for an unknown vin.
func UpdateVehicleTx(tx *bolt.Tx, vin string, change func(*Vehicle)) error {
	return updateVehicle(tx, vin, change)
}

// UserExistsTx reports whether user exists, inside tx.
func UserExistsTx(tx *bolt.Tx, user string) bool {
	return tx.Bucket(bucketUsers).Get([]byte(user)) != nil
}

// updateVehicle reads vin's record in tx, applies change and writes it back; ErrNotFound for an
// unknown vin.
func updateVehicle(tx *bolt.Tx, vin string, change func(*Vehicle)) error {
	bk := tx.Bucket(bucketVehicles)
	b := bk.Get([]byte(vin))
	if b == nil {
		return fmt.Errorf("vehicle %s: %w", vin, ErrNotFound)
	}
	var v Vehicle
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	change(&v)
	nb, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return bk.Put([]byte(vin), nb)
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

// PutTwins writes twins in one transaction (the gateway flushes its in-memory twin
// periodically, so telemetry at fleet rates costs one commit per flush, not per message).
func (s *Store) PutTwins(ts []Twin) error {
	if len(ts) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketTwin)
		for _, t := range ts {
			b, err := json.Marshal(t)
			if err != nil {
				return err
			}
			if err := bk.Put([]byte(t.VIN), b); err != nil {
				return err
			}
		}
		return nil
	})
}

// LoadTwins returns every stored twin.
func (s *Store) LoadTwins() ([]Twin, error) {
	var out []Twin
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTwin).ForEach(func(_, b []byte) error {
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
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCmdIDs).ForEach(func(k, v []byte) error {
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
func PutCommandID(tx *bolt.Tx, id string, untilMs int64) error {
	return tx.Bucket(bucketCmdIDs).Put([]byte(id), binary.BigEndian.AppendUint64(nil, uint64(untilMs)))
}

// PruneCommandIDs forgets ids that expired before nowMs, and cuts down to maxUntilMs those
// remembered for longer than any command can live (ids that a gateway without that bound
// remembered until an expiry its sender chose).
func (s *Store) PruneCommandIDs(nowMs, maxUntilMs int64) (int, error) {
	var n int
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCmdIDs).Cursor()
		var dead, long [][]byte
		for k, v := c.First(); k != nil; k, v = c.Next() {
			switch {
			case len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= nowMs:
				dead = append(dead, append([]byte(nil), k...))
			case int64(binary.BigEndian.Uint64(v)) > maxUntilMs:
				long = append(long, append([]byte(nil), k...))
			}
		}
		b := tx.Bucket(bucketCmdIDs)
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range long {
			if err := b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(maxUntilMs))); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	return n, err
}

// UserNames returns all user names, sorted.
func (s *Store) UserNames() ([]string, error) {
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUsers).ForEach(func(k, _ []byte) error {
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
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(key)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// PutMeta writes a value of the meta bucket.
func (s *Store) PutMeta(key string, value []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte(key), value) })
}
