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
	// Times of a command's life, Unix ms (see docs/PROTOCOL.md): on a command record the
	// request's arrival; on a result record when the command was sent to the car and the
	// car's time of its result.
	ReceivedMs int64 `json:"received,omitempty"`
	SentMs     int64 `json:"sent,omitempty"`
	CarMs      int64 `json:"car_ts,omitempty"`
}

// AuditKinds are the kinds of audit records, for a query that names one.
var AuditKinds = []string{"command", "result", "admin", "login", "2fa", "keys", "vehicle", "late_reply"}

// AuditQuery selects audit records (the query of GET /v1/admin/audit). Zero fields do not
// select.
type AuditQuery struct {
	VIN  string
	User string
	Kind string // one of AuditKinds
	// Limit is how many of the newest records to return; 0: the gateway's default, 100.
	Limit int
	// SinceMs and UntilMs bound the records' time (unix ms): since included, until not.
	SinceMs int64
	UntilMs int64
}
