package api

import "telematics/pkg/protocol"

// AddUserRequest is the body of POST /v1/admin/users.
type AddUserRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// UserAdded is the answer to POST /v1/admin/users.
type UserAdded struct {
	Username string `json:"username"`
}

// UserView is what the admin API shows of a user (GET /v1/admin/users).
type UserView struct {
	Name         string `json:"name"`
	CreatedMs    int64  `json:"created"`
	Disabled     bool   `json:"disabled"`
	TOTPEnrolled bool   `json:"totp_enrolled"`
	// PasswordLockedUntilMs and TOTPLockedUntilMs are the ends of running lockouts (0: none):
	// wrong passwords lock password login, wrong codes the second factor.
	PasswordLockedUntilMs int64 `json:"password_locked_until,omitempty"`
	TOTPLockedUntilMs     int64 `json:"totp_locked_until,omitempty"`
	// Vehicles are the cars the user has a role on.
	Vehicles map[string]protocol.Role `json:"vehicles,omitempty"`
}

// UserChange is the answer to the admin's changes of a user: POST
// /v1/admin/users/{user}/unlock, disable, enable, password, reset-2fa and DELETE
// /v1/admin/users/{user}. Each sets the fields of what it did: unlock and reset-2fa
// LockoutCleared, disable and enable Disabled (sent by both), password PasswordReset,
// reset-2fa Enrolled (false) and EnrollmentRemoved, delete Deleted.
type UserChange struct {
	Deleted           bool   `json:"deleted,omitempty"`
	Disabled          *bool  `json:"disabled,omitempty"`
	Enrolled          *bool  `json:"enrolled,omitempty"`
	EnrollmentRemoved *bool  `json:"enrollment_removed,omitempty"`
	LockoutCleared    bool   `json:"lockout_cleared,omitempty"`
	PasswordReset     bool   `json:"password_reset,omitempty"`
	User              string `json:"user"`
}
