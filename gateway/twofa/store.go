package twofa

import (
	"encoding/json"
	"fmt"
	"time"

	"telematics/gateway/kv"
)

// Buckets this package owns in the gateway's store. Keys of bucketTOTP and
// bucketLockout are user names (protocol.ValidUser), values are JSON records with a "v" field.
var (
	bucketTOTP    = []byte("totp")         // user -> totpRecord
	bucketLockout = []byte("totp_lockout") // user -> lockRecord
	bucketMeta    = []byte("totp_meta")    // keyKeyCheck, keySchema
	bucketStepUp  = []byte("totp_stepup")  // user "/" clientID -> elevation's end (unix ms, 8 bytes big-endian)
	keyKeyCheck   = []byte("key_check")    // a value sealed with the service key, to detect a wrong key at start
	keySchema     = []byte("schema")       // recordVersion as a decimal string
)

// CachedBuckets are this package's buckets that a gateway replica keeps a watched copy of
// (etcdkv.Options.Cache): enrollments, lockouts and step-ups, which every guarded command's
// decision reads.
var CachedBuckets = []string{string(bucketTOTP), string(bucketLockout), string(bucketStepUp)}

// recordVersion is the "v" of every record this build writes and the only one it reads.
const recordVersion = 1

// Bounds the decoders enforce on stored bytes, so that a damaged or hostile record cannot make
// the service allocate or loop without limit.
const (
	maxRecordBytes   = 4096
	maxLockoutBytes  = 4096
	maxFailuresKept  = 64 // more than any sane MaxFailures
	recoveryHashSize = 32 // SHA-256
)

// totpRecord is one user's enrollment. A user has an active secret, a pending one, or both
// (re-enrollment in progress: the active secret stays in force until the pending one is
// confirmed).
type totpRecord struct {
	V int `json:"v"`
	// Active is the confirmed secret; nil until the first Confirm.
	Active *sealedSecret `json:"active,omitempty"`
	// LastStep is the last time step (unix seconds / 30) accepted for Active. Codes of this
	// step or earlier are replays (RFC 6238 §5.2).
	LastStep int64 `json:"last_step"`
	// Pending is a secret shown to the user by Enroll and not yet confirmed.
	Pending *sealedSecret `json:"pending,omitempty"`
	// Recovery holds the SHA-256 of each unused recovery code; a used code is removed.
	Recovery [][]byte `json:"recovery,omitempty"`
}

// sealedSecret is a TOTP secret sealed with AES-256-GCM: nonce || ciphertext || tag, with the
// user name as additional data.
type sealedSecret struct {
	Sealed []byte `json:"sealed"`
	AtMs   int64  `json:"at"` // when it was created (pending) or confirmed (active)
}

// lockRecord is one user's brute-force state. Failures holds the unix-ms times of the failures
// still inside the window; LockedUntilMs is 0 or the end of the current lockout.
type lockRecord struct {
	V             int     `json:"v"`
	Failures      []int64 `json:"failures,omitempty"`
	LockedUntilMs int64   `json:"locked_until,omitempty"`
}

func (r *lockRecord) lockedAt(now time.Time) bool {
	return r.LockedUntilMs != 0 && now.UnixMilli() < r.LockedUntilMs
}

// decodeTOTPRecord parses and validates a stored enrollment. It is the one decoder of stored
// enrollment bytes, and it is fuzzed.
func decodeTOTPRecord(b []byte) (*totpRecord, error) {
	if len(b) > maxRecordBytes {
		return nil, fmt.Errorf("totp record of %d bytes exceeds %d", len(b), maxRecordBytes)
	}
	var r totpRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("malformed totp record: %w", err)
	}
	if r.V != recordVersion {
		return nil, fmt.Errorf("totp record version %d, this build reads %d", r.V, recordVersion)
	}
	if r.Active == nil && r.Pending == nil {
		return nil, fmt.Errorf("totp record has neither an active nor a pending secret")
	}
	for _, s := range []*sealedSecret{r.Active, r.Pending} {
		if s != nil && (len(s.Sealed) < minSealedSize || len(s.Sealed) > maxSealedSize) {
			return nil, fmt.Errorf("sealed secret of %d bytes outside [%d, %d]", len(s.Sealed), minSealedSize, maxSealedSize)
		}
	}
	if r.LastStep < 0 {
		return nil, fmt.Errorf("negative last step %d", r.LastStep)
	}
	if len(r.Recovery) > RecoveryCodeCount {
		return nil, fmt.Errorf("%d recovery hashes, at most %d", len(r.Recovery), RecoveryCodeCount)
	}
	for _, h := range r.Recovery {
		if len(h) != recoveryHashSize {
			return nil, fmt.Errorf("recovery hash of %d bytes, want %d", len(h), recoveryHashSize)
		}
	}
	if len(r.Recovery) == 0 {
		r.Recovery = nil // "recovery":[] and no key mean the same
	}
	return &r, nil
}

// decodeLockRecord parses and validates a stored lockout state; fuzzed like decodeTOTPRecord.
func decodeLockRecord(b []byte) (*lockRecord, error) {
	if len(b) > maxLockoutBytes {
		return nil, fmt.Errorf("lockout record of %d bytes exceeds %d", len(b), maxLockoutBytes)
	}
	var r lockRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("malformed lockout record: %w", err)
	}
	if r.V != recordVersion {
		return nil, fmt.Errorf("lockout record version %d, this build reads %d", r.V, recordVersion)
	}
	if len(r.Failures) > maxFailuresKept {
		return nil, fmt.Errorf("%d failures kept, at most %d", len(r.Failures), maxFailuresKept)
	}
	if r.LockedUntilMs < 0 {
		return nil, fmt.Errorf("negative lockout end %d", r.LockedUntilMs)
	}
	return &r, nil
}

// getTOTP returns the user's enrollment, or nil if there is none. The record is decoded into
// fresh memory, so it stays valid after tx ends.
func getTOTP(tx kv.Tx, user string) (*totpRecord, error) {
	v, err := tx.Get(bucketTOTP, []byte(user))
	if err != nil || v == nil {
		return nil, err
	}
	r, err := decodeTOTPRecord(v)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", user, err)
	}
	return r, nil
}

func putTOTP(tx kv.Tx, user string, r *totpRecord) error {
	r.V = recordVersion
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Put(bucketTOTP, []byte(user), v)
}

func deleteTOTP(tx kv.Tx, user string) error {
	return tx.Delete(bucketTOTP, []byte(user))
}

// getLock returns the user's lockout state; a user without one gets an empty record.
func getLock(tx kv.Tx, user string) (*lockRecord, error) {
	v, err := tx.Get(bucketLockout, []byte(user))
	if err != nil {
		return nil, err
	}
	if v == nil {
		return &lockRecord{V: recordVersion}, nil
	}
	r, err := decodeLockRecord(v)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", user, err)
	}
	return r, nil
}

// putLock stores r, or deletes the key when r holds nothing, so the bucket only holds users
// with recent failures.
func putLock(tx kv.Tx, user string, r *lockRecord) error {
	if len(r.Failures) == 0 && r.LockedUntilMs == 0 {
		return tx.Delete(bucketLockout, []byte(user))
	}
	r.V = recordVersion
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Put(bucketLockout, []byte(user), v)
}
