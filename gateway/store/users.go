package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"telematics/gateway/kv"
)

// ErrHasVehicles means a user still has a role on a car: they must be removed from it first.
var ErrHasVehicles = errors.New("still has a role on a car")

// NextTokenGen is the token generation after gen at nowMs: larger than gen, and than any
// generation handed out before nowMs, so a user created again under a deleted user's name
// starts past the old user's tokens.
func NextTokenGen(gen uint64, nowMs int64) uint64 {
	return max(gen+1, uint64(max(nowMs, 0)))
}

// UpdateUser applies change to user name's record in one transaction; ErrNotFound for an
// unknown name. change may run twice (group commit): it must only set fields.
func (s *Store) UpdateUser(name string, change func(*User) error) (User, error) {
	var out User
	err := s.update(func(tx kv.Tx) error {
		v, err := tx.Get(bucketUsers, []byte(name))
		if err != nil {
			return err
		}
		if v == nil {
			return fmt.Errorf("user %q: %w", name, ErrNotFound)
		}
		var u User
		if err := json.Unmarshal(v, &u); err != nil {
			return err
		}
		if err := change(&u); err != nil {
			return err
		}
		b, err := json.Marshal(u)
		if err != nil {
			return err
		}
		out = u
		return tx.Put(bucketUsers, []byte(name), b)
	})
	return out, err
}

// ListUsers returns every user, ordered by name.
func (s *Store) ListUsers() ([]User, error) {
	var out []User
	err := s.view(func(tx kv.Tx) error {
		return tx.Scan(bucketUsers, nil, nil, func(_, v []byte) error {
			var u User
			if err := json.Unmarshal(v, &u); err != nil {
				return err
			}
			out = append(out, u)
			return nil
		})
	})
	return out, err
}

// DeleteUser removes user name; ErrNotFound for an unknown name, ErrHasVehicles (naming the
// cars) while the user has a role on any car. The check and the deletion are one
// transaction, so no assignment can slip in between; also runs in it (the user's 2FA state and
// audit record go with the user).
func (s *Store) DeleteUser(name string, also ...func(kv.Tx) error) error {
	return s.update(func(tx kv.Tx) error {
		u, err := tx.Get(bucketUsers, []byte(name))
		if err != nil {
			return err
		}
		if u == nil {
			return fmt.Errorf("user %q: %w", name, ErrNotFound)
		}
		// On a shared store only the user's cars are read (userindex.go); a bbolt file
		// scans every car, as it always did.
		vins, err := userVINsTx(tx, name)
		if err != nil {
			return err
		}
		if len(vins) > 0 {
			sort.Strings(vins)
			return fmt.Errorf("user %q %w: %s", name, ErrHasVehicles, strings.Join(vins, ", "))
		}
		for _, fn := range also {
			if err := fn(tx); err != nil {
				return err
			}
		}
		if err := deleteUserIndexTx(tx, name); err != nil {
			return err
		}
		return tx.Delete(bucketUsers, []byte(name))
	})
}
