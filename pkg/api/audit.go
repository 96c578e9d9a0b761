package api

// AuditEvent is one record of the audit log, as GET /v1/admin/audit answers it (newest
// first).
type AuditEvent struct {
	Seq      uint64 `json:"seq"`
	TsMs     int64  `json:"ts"`
	Kind     string `json:"kind"`
	User     string `json:"user,omitempty"`
	ClientID string `json:"client_id,omitempty"`
	VIN      string `json:"vin,omitempty"`
	CmdID    string `json:"cmd_id,omitempty"`
	Action   string `json:"action,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

// AuditQuery selects audit records (the query of GET /v1/admin/audit). Zero fields do not
// select.
type AuditQuery struct {
	VIN     string
	User    string
	Kind    string // login, command, admin, ...
	SinceMs int64  // unix ms, inclusive
	UntilMs int64
	Limit   int
}
