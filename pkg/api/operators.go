package api

import (
	"context"
	"net/http"
	"net/url"
)

// AddOperatorRequest is the body of POST /v1/admin/operators: a console operator.
type AddOperatorRequest struct {
	Name     string `json:"name"`
	Role     string `json:"role"` // admin or viewer
	Password string `json:"password"`
}

// OperatorView is what the admin API shows of a console operator (never the hash).
type OperatorView struct {
	Name         string `json:"name"`
	Role         string `json:"role"`
	CreatedMs    int64  `json:"created"`
	TOTPEnrolled bool   `json:"totp_enrolled"`
}

// OperatorRemoved is the answer to DELETE /v1/admin/operators/{name}.
type OperatorRemoved struct {
	Name    string `json:"name"`
	Removed bool   `json:"removed"`
}

// AddOperator creates a console operator (admin).
func (c *Client) AddOperator(ctx context.Context, name, role, password string) (OperatorView, error) {
	return post[OperatorView](ctx, c, "/v1/admin/operators", AddOperatorRequest{Name: name, Role: role, Password: password})
}

// Operators lists the console operators (admin).
func (c *Client) Operators(ctx context.Context) ([]OperatorView, error) {
	return get[[]OperatorView](ctx, c, "/v1/admin/operators")
}

// RemoveOperator removes a console operator, their TOTP enrollment and their sessions (admin).
func (c *Client) RemoveOperator(ctx context.Context, name string) (OperatorRemoved, error) {
	var out OperatorRemoved
	err := c.Do(ctx, http.MethodDelete, "/v1/admin/operators/"+url.PathEscape(name), nil, &out)
	return out, err
}
