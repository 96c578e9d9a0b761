package operators_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"telematics/gateway/kv"
	"telematics/gateway/operators"
	"telematics/gateway/store"
)

func open(t *testing.T) (*store.Store, *operators.Store) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, operators.New(st.KV())
}

func TestAddGetListRemove(t *testing.T) {
	_, ops := open(t)
	ctx := context.Background()
	alsoRan := 0
	if err := ops.Add(ctx, operators.Operator{Name: "alice", Role: operators.RoleAdmin, PasswordHash: "h1", CreatedMs: 1},
		func(kv.Tx) error { alsoRan++; return nil }); err != nil {
		t.Fatal(err)
	}
	if alsoRan == 0 {
		t.Error("also did not run in Add's transaction")
	}
	if err := ops.Add(ctx, operators.Operator{Name: "bob", Role: operators.RoleViewer, PasswordHash: "h2", CreatedMs: 2}, nil); err != nil {
		t.Fatal(err)
	}
	if err := ops.Add(ctx, operators.Operator{Name: "alice", Role: operators.RoleViewer}, nil); !errors.Is(err, operators.ErrExists) {
		t.Errorf("duplicate: %v", err)
	}
	op, err := ops.Get(ctx, "alice")
	if err != nil || op.Role != operators.RoleAdmin || op.PasswordHash != "h1" || op.CreatedMs != 1 {
		t.Errorf("get: %+v %v", op, err)
	}
	list, err := ops.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "alice" || list[1].Name != "bob" {
		t.Errorf("list: %+v %v", list, err)
	}
	if err := ops.Remove(ctx, "bob", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ops.Get(ctx, "bob"); !errors.Is(err, operators.ErrNotFound) {
		t.Errorf("get removed: %v", err)
	}
	if err := ops.Remove(ctx, "bob", nil); !errors.Is(err, operators.ErrNotFound) {
		t.Errorf("remove twice: %v", err)
	}
}

func TestAddRefusesBadNamesAndRoles(t *testing.T) {
	_, ops := open(t)
	cases := []struct {
		name string
		op   operators.Operator
		want error
	}{
		{"upper case", operators.Operator{Name: "Alice", Role: operators.RoleAdmin}, operators.ErrBadName},
		{"empty", operators.Operator{Role: operators.RoleAdmin}, operators.ErrBadName},
		{"at sign", operators.Operator{Name: "a@console", Role: operators.RoleAdmin}, operators.ErrBadName},
		{"leading dot", operators.Operator{Name: ".x", Role: operators.RoleAdmin}, operators.ErrBadName},
		{"65 characters", operators.Operator{Name: string(make([]byte, 65)), Role: operators.RoleAdmin}, operators.ErrBadName},
		{"no role", operators.Operator{Name: "alice"}, operators.ErrBadRole},
		{"owner", operators.Operator{Name: "alice", Role: "owner"}, operators.ErrBadRole},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := ops.Add(context.Background(), tc.op, nil); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if operators.ValidName("admin") != true {
		t.Error("admin is a fine operator name (unlike a user name)")
	}
}

func TestRemoveRollsBackWhenAlsoFails(t *testing.T) {
	_, ops := open(t)
	ctx := context.Background()
	if err := ops.Add(ctx, operators.Operator{Name: "alice", Role: operators.RoleAdmin}, nil); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := ops.Remove(ctx, "alice", func(kv.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("remove: %v", err)
	}
	if _, err := ops.Get(ctx, "alice"); err != nil {
		t.Errorf("alice gone although the removal failed: %v", err)
	}
}
