package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"telematics/pkg/mqttc"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
)

// The failover drill needs what pkg/phone's App hides: every reply to a request, not only the
// first terminal one (a second terminal reply is a duplicate the drill must count). A
// replyTracker is an owner's app for the drill: the same MQTT session (the session's client id,
// user and token), the same signed request, and a record of every reply by request id.

// sentRequest is one request of the drill and every reply it got.
type sentRequest struct {
	ID, VIN   string
	Action    protocol.Action
	SentAt    time.Time
	ExpiresAt time.Time
	// PublishErr: the broker did not take the request.
	PublishErr error
	// Replies are the statuses in the order they came; Terminal the terminal ones' times.
	Replies   []string
	Reasons   []string
	Terminals []time.Time
}

// firstTerminal is the request's first terminal reply: its status (with the reason of a
// refusal) and when it came; ok false when none came.
func (r *sentRequest) firstTerminal() (status string, at time.Time, ok bool) {
	for i, st := range r.Replies {
		if protocol.Terminal(st) {
			if r.Reasons[i] != "" {
				st += ":" + r.Reasons[i]
			}
			return st, r.Terminals[0], true
		}
	}
	return "", time.Time{}, false
}

// requestLog holds every request of a drill, by id; safe for concurrent use.
type requestLog struct {
	mu     sync.Mutex
	byID   map[string]*sentRequest
	order  []*sentRequest
	stray  int // replies for an id the drill never sent
	broken int // replies that did not decode
}

func newRequestLog() *requestLog { return &requestLog{byID: map[string]*sentRequest{}} }

func (l *requestLog) add(r *sentRequest) {
	l.mu.Lock()
	l.byID[r.ID] = r
	l.order = append(l.order, r)
	l.mu.Unlock()
}

func (l *requestLog) reply(payload []byte, at time.Time) {
	var rep protocol.Reply
	if err := protocol.Decode(payload, &rep); err != nil {
		l.mu.Lock()
		l.broken++
		l.mu.Unlock()
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.byID[rep.ID]
	if !ok {
		l.stray++
		return
	}
	r.Replies = append(r.Replies, rep.Status)
	r.Reasons = append(r.Reasons, string(rep.Reason))
	if protocol.Terminal(rep.Status) {
		r.Terminals = append(r.Terminals, at)
	}
}

func (l *requestLog) publishFailed(id string, err error) {
	l.mu.Lock()
	if r := l.byID[id]; r != nil {
		r.PublishErr = err
	}
	l.mu.Unlock()
}

// snapshot copies every request (with its replies so far).
func (l *requestLog) snapshot() (reqs []sentRequest, stray, broken int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	reqs = make([]sentRequest, len(l.order))
	for i, r := range l.order {
		reqs[i] = *r
		reqs[i].Replies = append([]string(nil), r.Replies...)
		reqs[i].Reasons = append([]string(nil), r.Reasons...)
		reqs[i].Terminals = append([]time.Time(nil), r.Terminals...)
	}
	return reqs, l.stray, l.broken
}

// settled reports whether every request has a terminal reply, or is past its expiry by grace
// (the gateway answers expired within its result_grace after the expiry).
func (l *requestLog) settled(now time.Time, grace time.Duration) (open int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.order {
		if len(r.Terminals) == 0 && r.PublishErr == nil && now.Before(r.ExpiresAt.Add(grace)) {
			open++
		}
	}
	return open
}

// replyTracker is one owner's app in the drill.
type replyTracker struct {
	user   string
	key    *sign.Signer
	client mqttc.Client
	log    *requestLog
}

// connectTracker opens p's app session on the broker and follows its replies into log.
func connectTracker(ctx context.Context, brokerURL string, p *person, log *requestLog) (*replyTracker, error) {
	s := p.sess
	c, err := mqttc.Dial(ctx, mqttc.Options{BrokerURL: brokerURL, ClientID: s.ClientID, Username: s.User, Password: s.Token})
	if err != nil {
		return nil, fmt.Errorf("%s's app connects: %w", p.name, err)
	}
	t := &replyTracker{user: s.User, key: p.key, client: c, log: log}
	if err := c.Subscribe(ctx, protocol.AppTopic(s.User, protocol.SuffixReply), 1, func(m mqttc.Message) {
		log.reply(m.Payload, time.Now())
	}); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s's app subscribes to its replies: %w", p.name, err)
	}
	return t, nil
}

// send publishes one signed request (no code: the drill's actions need none) and records it.
func (t *replyTracker) send(ctx context.Context, vin string, action protocol.Action) {
	id, err := uuid.NewV7()
	if err != nil {
		id = uuid.New()
	}
	now := time.Now()
	cmd := protocol.Command{V: protocol.Version, ID: id.String(), VIN: vin, Action: action, KeyID: t.key.KID(), User: t.user,
		IssuedAtMs: now.UnixMilli(), ExpiresAtMs: now.Add(protocol.DefaultCommandLifetimeMs * time.Millisecond).UnixMilli()}
	r := &sentRequest{ID: cmd.ID, VIN: vin, Action: action, SentAt: now, ExpiresAt: time.UnixMilli(cmd.ExpiresAtMs)}
	t.log.add(r)
	_, env, err := phone.SignCommand(t.key, cmd)
	if err != nil {
		t.log.publishFailed(cmd.ID, err)
		return
	}
	payload, err := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: env})
	if err != nil {
		t.log.publishFailed(cmd.ID, err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := t.client.Publish(pctx, protocol.AppTopic(t.user, protocol.SuffixCmd), 1, false, payload); err != nil {
		t.log.publishFailed(cmd.ID, err)
	}
}

func (t *replyTracker) close() { t.client.Close() }

// execCounter is the cars' store with a count of every command each car committed as
// executed: the cars' own word on what ran, by "VIN/command id".
type execCounter struct {
	vehicle.CarStore
	mu     sync.Mutex
	counts map[string]int
	// redelivered counts commands a car was handed again after it had executed them (it
	// refuses them as duplicate): a sign that the cluster sent one command twice.
	redelivered int
}

func newExecCounter() *execCounter { return &execCounter{counts: map[string]int{}} }

// Executed is the store's, counting the commands seen again.
func (e *execCounter) Executed(vin, id string) (bool, error) {
	ok, err := e.CarStore.Executed(vin, id)
	if ok {
		e.mu.Lock()
		e.redelivered++
		e.mu.Unlock()
	}
	return ok, err
}

// CommitCommand is the store's, counted when it commits.
func (e *execCounter) CommitCommand(vin string, c carstore.Commit) error {
	err := e.CarStore.CommitCommand(vin, c)
	if err == nil {
		e.mu.Lock()
		e.counts[vin+"/"+c.ID]++
		e.mu.Unlock()
	}
	return err
}

func (e *execCounter) snapshot() (counts map[string]int, redelivered int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	counts = make(map[string]int, len(e.counts))
	for k, v := range e.counts {
		counts[k] = v
	}
	return counts, e.redelivered
}
