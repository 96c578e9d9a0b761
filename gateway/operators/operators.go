// Package operators keeps the console's named operator accounts (admin or viewer, an argon2id
// password hash) in the gateway's store, bucket "operators", apart from the app's users: an
// operator is not a user of any car, and a user's password never opens the console.
package operators

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"telematics/gateway/kv"
)

// Role is what an operator may do in the console.
type Role string

// The roles. A viewer sees everything the console shows; only an admin may change anything.
const (
	RoleAdmin  Role = "admin"
	RoleViewer Role = "viewer"
)

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleViewer }

// Sentinel errors.
var (
	// ErrNotFound: no operator of that name.
	ErrNotFound = errors.New("no such operator")
	// ErrExists: an operator of that name exists already.
	ErrExists = errors.New("operator already exists")
	// ErrBadName: not an operator name (see ValidName).
	ErrBadName = errors.New("operator names are 1-64 of a-z 0-9 _ . - starting with a letter or digit")
	// ErrBadRole: not admin or viewer.
	ErrBadRole = errors.New("the role is admin or viewer")
)

var bucket = []byte("operators")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// ValidName reports whether s is a well-formed operator name.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Operator is one console account. The password is kept only as an argon2id PHC string.
type Operator struct {
	Name         string `json:"name"`
	Role         Role   `json:"role"`
	PasswordHash string `json:"password_hash"`
	// CreatedMs tells an operator from an earlier one of the same name: a console session
	// names it, so removing an operator and adding one of that name again ends the old
	// sessions.
	CreatedMs int64 `json:"created"`
}

// Store is the operator accounts in a kv store (the gateway store's, store.Store.KV).
type Store struct{ kv kv.Store }

// New returns the operators kept in kvs.
func New(kvs kv.Store) *Store { return &Store{kv: kvs} }

// Add creates op inside an Update of the store, with also run in the same transaction (its
// audit record); ErrExists if the name is taken.
func (s *Store) Add(ctx context.Context, op Operator, also func(kv.Tx) error) error {
	if !ValidName(op.Name) {
		return ErrBadName
	}
	if !op.Role.Valid() {
		return ErrBadRole
	}
	b, err := json.Marshal(op)
	if err != nil {
		return err
	}
	return s.kv.Update(ctx, func(tx kv.Tx) error {
		old, err := tx.Get(bucket, []byte(op.Name))
		if err != nil {
			return err
		}
		if old != nil {
			return fmt.Errorf("operator %q: %w", op.Name, ErrExists)
		}
		if err := tx.Put(bucket, []byte(op.Name), b); err != nil {
			return err
		}
		if also != nil {
			return also(tx)
		}
		return nil
	})
}

// Get returns the operator name, or ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (Operator, error) {
	var op Operator
	err := s.kv.View(ctx, func(tx kv.Tx) error {
		var err error
		op, err = GetTx(tx, name)
		return err
	})
	return op, err
}

// GetTx is Get inside tx.
func GetTx(tx kv.Tx, name string) (Operator, error) {
	var op Operator
	if !ValidName(name) {
		return op, fmt.Errorf("operator %q: %w", name, ErrNotFound)
	}
	b, err := tx.Get(bucket, []byte(name))
	if err != nil {
		return op, err
	}
	if b == nil {
		return op, fmt.Errorf("operator %q: %w", name, ErrNotFound)
	}
	if err := json.Unmarshal(b, &op); err != nil {
		return op, fmt.Errorf("operator %q: %w", name, err)
	}
	return op, nil
}

// List returns every operator, ordered by name.
func (s *Store) List(ctx context.Context) ([]Operator, error) {
	var out []Operator
	err := s.kv.View(ctx, func(tx kv.Tx) error {
		out = nil
		return tx.Scan(bucket, nil, nil, func(_, v []byte) error {
			var op Operator
			if err := json.Unmarshal(v, &op); err != nil {
				return err
			}
			out = append(out, op)
			return nil
		})
	})
	return out, err
}

// Remove deletes the operator name, with also run in the same transaction (the removal of
// their 2FA state and the audit record); ErrNotFound for an unknown name.
func (s *Store) Remove(ctx context.Context, name string, also func(kv.Tx) error) error {
	return s.kv.Update(ctx, func(tx kv.Tx) error {
		if _, err := GetTx(tx, name); err != nil {
			return err
		}
		if err := tx.Delete(bucket, []byte(name)); err != nil {
			return err
		}
		if also != nil {
			return also(tx)
		}
		return nil
	})
}
