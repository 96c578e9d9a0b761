package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"telematics/gateway/httpapi"
	"telematics/gateway/kv"
	"telematics/gateway/operators"
	"telematics/pkg/protocol"
)

// Sessions live in the gateway's store, so they outlive a gateway restart and are shared by
// replicas. The key is the SHA-256 of the cookie's token: what the store holds does not let
// anyone act as the operator.
var bucketSessions = []byte("console_sessions")

// CookieName is the session cookie.
const CookieName = "console_session"

// CSRFHeader carries the session's CSRF token on every state-changing call.
const CSRFHeader = "X-CSRF-Token"

// The stages of a session: enroll after a right password of an operator without TOTP (it
// may only confirm an enrollment), full once the second factor was given.
const (
	stageEnroll = "enroll"
	stageFull   = "full"
	stageAny    = "" // for authed: either stage
)

// enrollTTL bounds a session that only may confirm an enrollment.
const enrollTTL = 10 * time.Minute

// seenGranularity: a session's last use is written at most this often (idle expiry is that
// much less exact, and a busy console does not write on every request).
const seenGranularity = 30 * time.Second

// sessionRecord is one session in the store.
type sessionRecord struct {
	Operator  string `json:"operator"`
	OpCreated int64  `json:"operator_created"` // operators.Operator.CreatedMs when it began
	Stage     string `json:"stage"`
	CSRF      string `json:"csrf"`
	CreatedMs int64  `json:"created"`
	SeenMs    int64  `json:"seen"`
	ExpiresMs int64  `json:"expires"` // the absolute end
}

// sessionCtx is a request's authenticated session.
type sessionCtx struct {
	key string // store key
	rec sessionRecord
	op  operators.Operator
}

type sessionKey struct{}

func sessionOf(r *http.Request) *sessionCtx {
	s, _ := r.Context().Value(sessionKey{}).(*sessionCtx)
	return s
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func storeKey(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// newSession stores a session for op at stage and sets its cookie; replace (may be "") is the
// store key of the session it replaces (a new token at every change of stage: no fixation).
func (c *Console) newSession(ctx context.Context, w http.ResponseWriter, r *http.Request, op operators.Operator, stage, replace string) (sessionRecord, error) {
	tok, err := randomToken()
	if err != nil {
		return sessionRecord{}, err
	}
	csrf, err := randomToken()
	if err != nil {
		return sessionRecord{}, err
	}
	now := c.now()
	ttl := c.cfg.AbsoluteTimeout
	if stage == stageEnroll {
		ttl = min(ttl, enrollTTL)
	}
	rec := sessionRecord{Operator: op.Name, OpCreated: op.CreatedMs, Stage: stage, CSRF: csrf,
		CreatedMs: now.UnixMilli(), SeenMs: now.UnixMilli(), ExpiresMs: now.Add(ttl).UnixMilli()}
	b, err := json.Marshal(rec)
	if err != nil {
		return sessionRecord{}, err
	}
	key := storeKey(tok)
	err = c.d.Store.Update(ctx, func(tx kv.Tx) error {
		if replace != "" {
			if err := tx.Delete(bucketSessions, []byte(replace)); err != nil {
				return err
			}
		}
		return tx.Put(bucketSessions, []byte(key), b)
	})
	if err != nil {
		return sessionRecord{}, err
	}
	http.SetCookie(w, c.cookie(r, tok, ttl))
	return rec, nil
}

// cookie is the session cookie: HttpOnly (no script reads it), SameSite=Strict (no other
// site's page sends it), Secure when the request came over TLS.
// Its Max-Age is the session's absolute lifetime (relative: the browser's clock does not
// matter); the store's record is what decides.
func (c *Console) cookie(r *http.Request, token string, ttl time.Duration) *http.Cookie {
	ck := &http.Cookie{Name: CookieName, Value: token, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int(ttl.Seconds())}
	if token == "" {
		ck.MaxAge = -1
	}
	return ck
}

// deleteSession removes the session key and clears the cookie.
func (c *Console) deleteSession(ctx context.Context, w http.ResponseWriter, r *http.Request, key string) error {
	http.SetCookie(w, c.cookie(r, "", 0))
	return c.d.Store.Update(ctx, func(tx kv.Tx) error { return tx.Delete(bucketSessions, []byte(key)) })
}

// errNoSession: no cookie, an unknown or ended session, or its operator is gone.
var errNoSession = errors.New("no session")

// lookup finds the request's session and its operator, ends it when idle or expired, and
// with touch records its use (an open event stream looks again without touching: a page left
// open is idle).
func (c *Console) lookup(ctx context.Context, r *http.Request, touch bool) (*sessionCtx, error) {
	ck, err := r.Cookie(CookieName)
	if err != nil || len(ck.Value) == 0 || len(ck.Value) > 128 {
		return nil, errNoSession
	}
	key := storeKey(ck.Value)
	now := c.now().UnixMilli()
	var s *sessionCtx
	// look decides in tx; without write it only reports that a write is due (an ended session
	// to delete, a use to record), and the lookup runs again in a write transaction. Most
	// requests only read.
	look := func(tx kv.Tx, write bool) (due bool, err error) {
		s = nil
		b, err := tx.Get(bucketSessions, []byte(key))
		if err != nil || b == nil {
			return false, err
		}
		var rec sessionRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return true, deleteIf(write, tx, key)
		}
		op, err := operators.GetTx(tx, rec.Operator)
		gone := errors.Is(err, operators.ErrNotFound) || (err == nil && op.CreatedMs != rec.OpCreated)
		if err != nil && !gone {
			return false, err
		}
		if gone || now >= rec.ExpiresMs || now-rec.SeenMs >= c.cfg.IdleTimeout.Milliseconds() {
			return true, deleteIf(write, tx, key)
		}
		if touch && now-rec.SeenMs >= seenGranularity.Milliseconds() {
			due = true
			if write {
				rec.SeenMs = now
				nb, err := json.Marshal(rec)
				if err != nil {
					return due, err
				}
				if err := tx.Put(bucketSessions, []byte(key), nb); err != nil {
					return due, err
				}
			}
		}
		s = &sessionCtx{key: key, rec: rec, op: op}
		return due, nil
	}
	var due bool
	err = c.d.Store.View(ctx, func(tx kv.Tx) error {
		var err error
		due, err = look(tx, false)
		return err
	})
	if err == nil && due {
		err = c.d.Store.Update(ctx, func(tx kv.Tx) error {
			_, err := look(tx, true)
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, errNoSession
	}
	return s, nil
}

func deleteIf(write bool, tx kv.Tx, key string) error {
	if !write {
		return nil
	}
	return tx.Delete(bucketSessions, []byte(key))
}

// pruneSessions deletes the sessions that ended (idle or past their absolute expiry) and whose
// cookie never came back, at most pruneBatch per call.
func (c *Console) pruneSessions(ctx context.Context) (int, error) {
	now := c.now().UnixMilli()
	idle := c.cfg.IdleTimeout.Milliseconds()
	var ended [][]byte
	err := c.d.Store.View(ctx, func(tx kv.Tx) error {
		ended = nil
		return tx.Scan(bucketSessions, nil, nil, func(k, v []byte) error {
			var rec sessionRecord
			if json.Unmarshal(v, &rec) != nil || now >= rec.ExpiresMs || now-rec.SeenMs >= idle {
				ended = append(ended, bytes.Clone(k))
			}
			if len(ended) == pruneBatch {
				return kv.Stop
			}
			return nil
		})
	})
	if err != nil || len(ended) == 0 {
		return 0, err
	}
	// Deleting a session that was used meanwhile is impossible: a used session is not ended.
	err = c.d.Store.Update(ctx, func(tx kv.Tx) error {
		for _, k := range ended {
			if err := tx.Delete(bucketSessions, k); err != nil {
				return err
			}
		}
		return nil
	})
	return len(ended), err
}

// pruneBatch bounds the keys one pruning transaction deletes (etcd's --max-txn-ops).
const pruneBatch = 100

// authed serves h to a request with a session of stage (stageAny: either) and, when role is
// set, an operator of that role. State-changing methods must also pass the CSRF check.
func (c *Console) authed(stage string, role operators.Role, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if unsafeMethod(r.Method) {
			if msg := crossSite(r); msg != "" {
				httpapi.Error(w, http.StatusForbidden, protocol.ReasonForbidden, msg)
				return
			}
		}
		ctx, cancel := reqCtx(r)
		s, err := c.lookup(ctx, r, true)
		cancel()
		if errors.Is(err, errNoSession) {
			httpapi.Error(w, http.StatusUnauthorized, protocol.ReasonUnauthenticated, "not logged in, or the session ended; log in again")
			return
		}
		if err != nil {
			httpapi.Fail(w, c.log, err)
			return
		}
		if stage != stageAny && s.rec.Stage != stage {
			if s.rec.Stage == stageEnroll {
				httpapi.Error(w, http.StatusForbidden, protocol.ReasonTOTPEnrollmentRequired, "confirm your TOTP enrollment first")
			} else {
				httpapi.Error(w, http.StatusConflict, protocol.ReasonBadRequest, "the enrollment is confirmed already")
			}
			return
		}
		if unsafeMethod(r.Method) {
			got := r.Header.Get(CSRFHeader)
			if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.rec.CSRF)) != 1 {
				httpapi.Error(w, http.StatusForbidden, protocol.ReasonForbidden, "missing or wrong "+CSRFHeader+" header (reload the page)")
				return
			}
		}
		if role != "" && s.op.Role != role {
			httpapi.Error(w, http.StatusForbidden, protocol.ReasonForbidden, "operator "+s.op.Name+" is a "+string(s.op.Role)+"; this needs the "+string(role)+" role")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}

func unsafeMethod(m string) bool {
	return m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions
}

// crossSite refuses (with the reason) a state-changing request another site's page could have
// sent: an Origin that is not this host, a browser's Sec-Fetch-Site other than same-origin,
// or a body that is not JSON (a plain form posts without a preflight).
func crossSite(r *http.Request) string {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return "request from another origin refused"
		}
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return "cross-site request refused"
	}
	if r.ContentLength != 0 || r.Header.Get("Content-Type") != "" {
		if ct := r.Header.Get("Content-Type"); ct != "application/json" && !startsWith(ct, "application/json;") {
			return "state-changing calls take application/json"
		}
	}
	return ""
}

func startsWith(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
