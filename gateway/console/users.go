package console

import (
	"net/http"
	"sort"
	"strings"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/twofa"
)

// UserView is one app user as the users page shows them: their second factor, whether and
// why they are locked out, their cars and keys.
type UserView struct {
	Name     string `json:"name"`
	Disabled bool   `json:"disabled,omitempty"`
	Enrolled bool   `json:"totp_enrolled"`
	Pending  bool   `json:"totp_pending,omitempty"`
	// Lockouts: each factor locked out now, with its cause and its end.
	Lockouts []Lockout `json:"lockouts"`
	Cars     []UserCar `json:"cars"`
	Keys     []UserKey `json:"keys"`
}

// Lockout is one lockout: "2fa" (twofa's, counting wrong codes and wrong passwords alike; its
// cause is the factor whose failure started it, from the audit log) or "password" (the
// login's own password lockout), with the failures that caused it where they are counted.
type Lockout struct {
	Factor   string `json:"factor"`
	Cause    string `json:"cause"`
	UntilMs  int64  `json:"until"`
	Failures int    `json:"failures,omitempty"`
}

// UserCar is a user's role on a car.
type UserCar struct {
	VIN  string `json:"vin"`
	Role string `json:"role"`
}

// UserKey is a key of the user in a car's current whitelist.
type UserKey struct {
	VIN         string   `json:"vin"`
	ID          string   `json:"id"`
	Role        string   `json:"role"`
	Channels    []string `json:"channels"`
	Label       string   `json:"label,omitempty"`
	NotAfterMs  int64    `json:"not_after,omitempty"`
	RevokedAtMs int64    `json:"revoked_at,omitempty"`
	Acked       bool     `json:"acked"`
}

// Users is GET /console/api/users.
type Users struct {
	Users []UserView `json:"users"`
	NowMs int64      `json:"now"`
}

// users is GET /console/api/users: every app user with their 2FA, lockouts, cars and keys.
func (c *Console) users(w http.ResponseWriter, _ *http.Request) {
	us, err := c.d.Store.ListUsers()
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	vs, err := c.d.Store.ListVehicles()
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	now := c.now()
	byName := make(map[string]*UserView, len(us))
	out := make([]UserView, len(us))
	for i, u := range us {
		v := UserView{Name: u.Name, Disabled: u.Disabled, Lockouts: []Lockout{}, Cars: []UserCar{}, Keys: []UserKey{}}
		st, err := c.d.TwoFA.Status(u.Name)
		if err != nil {
			httpapi.Fail(w, c.log, err)
			return
		}
		v.Enrolled, v.Pending = st.Enrolled, st.Pending
		if !st.LockedUntil.IsZero() {
			v.Lockouts = append(v.Lockouts, Lockout{Factor: "2fa", Cause: c.lockoutCause(u.Name),
				UntilMs: st.LockedUntil.UnixMilli(), Failures: st.RecentFailures})
		}
		if c.d.UserLockout != nil {
			if until := c.d.UserLockout.LockedUntil(u.Name); until.After(now) {
				v.Lockouts = append(v.Lockouts, Lockout{Factor: "password", Cause: "wrong passwords at login", UntilMs: until.UnixMilli()})
			}
		}
		out[i] = v
		byName[u.Name] = &out[i]
	}
	for _, veh := range vs {
		for u, role := range veh.Users {
			if v := byName[u]; v != nil {
				v.Cars = append(v.Cars, UserCar{VIN: veh.VIN, Role: string(role)})
			}
		}
		if c.d.Whitelists == nil || len(veh.Users) == 0 {
			continue
		}
		st := c.d.Whitelists.Status(veh.VIN)
		for _, k := range st.Keys {
			if v := byName[k.User]; v != nil {
				v.Keys = append(v.Keys, UserKey{VIN: veh.VIN, ID: k.ID, Role: string(k.Role), Channels: k.Channels, Label: k.Label,
					NotAfterMs: k.NotAfterMs, RevokedAtMs: k.RevokedAtMs, Acked: st.InSync})
			}
		}
	}
	for i := range out {
		sort.Slice(out[i].Cars, func(a, b int) bool { return out[i].Cars[a].VIN < out[i].Cars[b].VIN })
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	httpapi.WriteJSON(w, http.StatusOK, Users{Users: out, NowMs: now.UnixMilli()})
}

// lockoutCause reads the audit record of the failure that started user's 2FA lockout: "wrong
// totp", "wrong password", … ("" when the record is gone from the recent ones).
func (c *Console) lockoutCause(user string) string {
	evs, err := c.d.Audit.Query(audit.Filter{User: user, Kind: audit.KindTwoFactor, Limit: 50})
	if err != nil {
		c.log.Warn("console: lockout cause not read", "user", user, "err", err)
		return ""
	}
	for _, ev := range evs { // newest first
		if ev.Outcome == string(twofa.EventLockout) {
			if f, ok := strings.CutPrefix(ev.Detail, "factor="); ok {
				f, _, _ = strings.Cut(f, " ")
				return "wrong " + f
			}
			return "failures"
		}
	}
	return ""
}
