package admin_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"telematics/pkg/api"
)

func TestOperatorAddListRemove(t *testing.T) {
	g := startGateway(t)
	if out := g.ok(password+"\n", "operator", "add", "alice", "--role", "admin"); !strings.Contains(out, "operator alice added (admin)") {
		t.Errorf("operator add: %q", out)
	}
	var added api.OperatorView
	decode(t, g.ok(password+"\n", "operator", "add", "bob", "--role", "viewer", "--json"), &added)
	if added.Name != "bob" || added.Role != "viewer" {
		t.Errorf("operator add --json: %+v", added)
	}
	if r := g.run(password+"\n", "operator", "add", "alice", "--role", "viewer"); r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("duplicate operator: exit %d, %q", r.code, r.stderr)
	}
	if r := g.run(password+"\n", "operator", "add", "carol", "--role", "root"); r.code == 0 || !strings.Contains(r.stderr, "admin or viewer") {
		t.Errorf("bad role: exit %d, %q", r.code, r.stderr)
	}
	var ops []api.OperatorView
	decode(t, g.ok("", "operator", "list", "--json"), &ops)
	if len(ops) != 2 || ops[0].Name != "alice" || ops[0].Role != "admin" || ops[0].TOTPEnrolled || ops[1].Name != "bob" {
		t.Errorf("operator list: %+v", ops)
	}
	if out := g.ok("", "operator", "list"); !strings.Contains(out, "alice") || !strings.Contains(out, "not enrolled") {
		t.Errorf("operator list (text): %q", out)
	}
	if out := g.ok("", "operator", "remove", "bob"); !strings.Contains(out, "operator bob removed") {
		t.Errorf("operator remove: %q", out)
	}
	if r := g.run("", "operator", "remove", "bob"); r.code == 0 || !strings.Contains(r.stderr, "no operator bob") {
		t.Errorf("remove unknown: exit %d, %q", r.code, r.stderr)
	}
	evs, err := g.client().Audit(context.Background(), api.AuditQuery{User: "bob@console"})
	if err != nil || len(evs) != 2 || evs[0].Outcome != "operator_removed" || evs[1].Outcome != "operator_added" {
		t.Errorf("audit of bob: %v %+v", err, evs)
	}
}

func TestOperatorAPIRefusesBadInput(t *testing.T) {
	g := startGateway(t)
	ctx := context.Background()
	cases := []struct{ name, role, password string }{
		{"Alice", "admin", password},
		{"alice", "owner", password},
		{"alice", "admin", "short"},
		{"", "", ""},
	}
	for _, tc := range cases {
		_, err := g.client().AddOperator(ctx, tc.name, tc.role, tc.password)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			t.Errorf("add %+v: %v, want 400", tc, err)
		}
	}
	if _, err := api.NewClient(g.cloud.HTTPURL(), "wrong").Operators(ctx); err == nil {
		t.Error("operator list with a wrong admin token succeeded")
	}
}
