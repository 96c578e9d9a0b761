package phone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"telematics/pkg/clock"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Path is the way a command went to the car.
type Path string

// The two paths.
const (
	PathCloud Path = "cloud" // through the broker and the gateway (2FA, grant)
	PathLocal Path = "local" // over the car's local link
)

// DefaultCloudTimeout is how long SendAuto waits for the cloud's first answer before it uses
// the local link.
const DefaultCloudTimeout = 3 * time.Second

// AutoOptions configure SendAuto. Zero values take the defaults given per field.
type AutoOptions struct {
	// Session is the login session for the cloud path. Without one (nil) or with an expired
	// one, SendAuto goes straight to the local link.
	Session *Session
	// BrokerURL overrides the session's broker.
	BrokerURL string
	// Key is the phone key that signs the command on either path. Required.
	Key *sign.Signer
	// User is the user the command names; default Session.User. The local link needs nothing
	// else: no session, no token.
	User string
	// LinkAddr is the car's local link; default DefaultLinkAddr.
	LinkAddr string
	// GatewayKeys are the gateway keys (base64url DER) whose certification of a car the phone
	// accepts on the local link (see LocalSend); default Session.LinkTrust().
	GatewayKeys []string
	// CloudTimeout bounds the cloud attempt from the start (connect, publish, first reply);
	// default DefaultCloudTimeout.
	CloudTimeout time.Duration
	// CloudOnly disables the fallback to the local link.
	CloudOnly bool
	// Logger receives MQTT connection events; default discards.
	Logger *slog.Logger
	// Clock dates the commands, judges the session's expiry and times the wait for a command's
	// expiry; default the real clock. The CloudTimeout is a network timeout and runs on real
	// time.
	Clock clock.Clock
	// CurrentBroker, when set (and BrokerURL is not), asks the gateway which broker it
	// advertises now (a session keeps the one its login named; see CurrentBroker). SendAuto
	// asks while it connects; when the session's broker cannot be used and the gateway names
	// another, SendAuto tries that one, with a new CloudTimeout, before any fallback.
	CurrentBroker func(ctx context.Context) (string, error)
	// BrokerChecked, when set, is told what CurrentBroker answered once the session's broker
	// could not be used: the broker the gateway names now, or why it could not tell.
	BrokerChecked func(current string, err error)
}

// Outcome is one answer to a SendAuto request, and which way it came.
type Outcome struct {
	Path Path
	// Fallback says why the local link was used after the cloud was tried (or could not be);
	// empty on the cloud path.
	Fallback string
	// CloudWait is how long the cloud attempt took before the local link was used (on the
	// local path after a fallback): a fallback's latency is CloudWait plus the local link's.
	CloudWait time.Duration
	// Reply is the answer; on the local path it is the car's result (executed or rejected) in
	// the form of a reply.
	Reply protocol.Reply
}

// SendAuto sends r the way a phone app should when the cloud may be down: through the cloud
// first, and over the car's local link only when the cloud did not answer at all within
// CloudTimeout (no usable session, broker unreachable or refusing the session, request not
// confirmed, no first reply). It calls onReply (if set) for every answer and returns the last.
//
// Once the cloud has answered, its answer is final, whatever it is:
//   - a rejection (forbidden, key_revoked, totp_invalid, vehicle_offline…) is not retried over
//     the local link: the local link is for a cloud that is down, not a second opinion;
//   - expired (the gateway accepted the command but the car's result did not come in time) is
//     not retried either: the command may still have run, and the user decides.
//
// Both attempts carry the same command id, and a car executes an id at most once: if the
// cloud was only slow and its copy reaches the car after the local one (or before it), the
// car refuses the second as a duplicate instead of executing the command twice.
func SendAuto(ctx context.Context, o AutoOptions, r Request, onReply func(Outcome)) (Outcome, error) {
	if o.Key == nil {
		return Outcome{}, ErrNoKey
	}
	o.Clock = clock.Or(o.Clock)
	if o.CloudTimeout <= 0 {
		o.CloudTimeout = DefaultCloudTimeout
	}
	if o.LinkAddr == "" {
		o.LinkAddr = DefaultLinkAddr
	}
	if o.User == "" && o.Session != nil {
		o.User = o.Session.User
	}
	if len(o.GatewayKeys) == 0 {
		o.GatewayKeys = o.Session.LinkTrust()
	}
	if r.ID == "" {
		r.ID = newCommandID()
	}
	emit := func(out Outcome) {
		if onReply != nil {
			onReply(out)
		}
	}

	start := time.Now()
	out, fallback, err := sendCloud(ctx, o, r, emit)
	if fallback == "" || o.CloudOnly {
		return out, err
	}
	out = Outcome{Path: PathLocal, Fallback: fallback, CloudWait: time.Since(start)}
	res, lerr := localSend(ctx, o.LinkAddr, o.GatewayKeys, o.Key, o.User, r, o.Clock)
	if lerr != nil {
		return out, fmt.Errorf("cloud: %s; %w", fallback, lerr)
	}
	out.Reply = ResultReply(r, res)
	emit(out)
	return out, nil
}

// ResultReply presents a car's result for request r as a reply, so that both paths answer in
// one form. A result's statuses (executed, rejected) are reply statuses too.
func ResultReply(r Request, res protocol.Result) protocol.Reply {
	return protocol.Reply{V: protocol.Version, ID: res.ID, Status: res.Status, Reason: res.Reason,
		VIN: r.VIN, Action: r.Action, State: res.State, TsMs: res.TsMs, Message: protocol.CarMessage(res.Message)}
}

// sendCloud makes the cloud attempt. A non-empty fallback says why the cloud did not answer
// (err then says the same for CloudOnly callers); otherwise out and err are final.
func sendCloud(ctx context.Context, o AutoOptions, r Request, emit func(Outcome)) (out Outcome, fallback string, err error) {
	out.Path = PathCloud
	start := o.Clock.Now()
	switch s := o.Session; {
	case s == nil:
		return out, "no login session", errors.New("no login session: log in first")
	case s.ExpiresAtMs != 0 && start.UnixMilli() >= s.ExpiresAtMs:
		return out, "the login session has expired", errors.New("the login session has expired: log in again")
	}
	firstBy := time.Now().Add(o.CloudTimeout)
	connect := func(brokerURL string) (*App, error) {
		cctx, cancel := context.WithDeadline(ctx, firstBy)
		defer cancel()
		return ConnectWith(cctx, o.Session, ConnectOptions{BrokerURL: brokerURL, Key: o.Key,
			ConnectTimeout: o.CloudTimeout, Logger: o.Logger, Clock: o.Clock})
	}
	current, stopAsking := askCurrentBroker(ctx, o, firstBy)
	app, err := connect(o.BrokerURL)
	if err != nil && current != nil && ctx.Err() == nil {
		// The session's broker cannot be used: if the gateway now names another, try that.
		a := <-current
		moved := a.err == nil && a.url != o.Session.BrokerURL
		if o.BrokerChecked != nil {
			o.BrokerChecked(a.url, a.err)
		}
		if moved {
			firstBy = time.Now().Add(o.CloudTimeout)
			app, err = connect(a.url)
		}
	}
	stopAsking()
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return out, "", ctx.Err()
		case errors.Is(err, mqttc.ErrNotAuthorized):
			return out, "the broker refused the login session", fmt.Errorf("the broker refused the login session (log in again): %w", err)
		case errors.Is(err, context.DeadlineExceeded):
			return out, fmt.Sprintf("broker unreachable within %s", o.CloudTimeout), fmt.Errorf("broker unreachable: %w", err)
		case errors.Is(err, mqttc.ErrRefused):
			return out, "the broker refused the connection", fmt.Errorf("the broker refused the connection: %w", err)
		}
		return out, "broker unusable", fmt.Errorf("connect to the broker: %w", err)
	}
	defer app.Close()
	reply, err := app.send(ctx, r, func(rep protocol.Reply) { emit(Outcome{Path: PathCloud, Reply: rep}) }, firstBy)
	switch {
	case errors.Is(err, errCloudSilent):
		return out, fmt.Sprintf("cloud did not answer within %s", o.CloudTimeout),
			fmt.Errorf("the cloud did not answer within %s", o.CloudTimeout)
	case errors.Is(err, errNotPublished):
		return out, "the broker did not take the request", err
	}
	out.Reply = reply
	return out, "", err
}

type brokerAnswer struct {
	url string
	err error
}

// askCurrentBroker starts o.CurrentBroker (bounded by deadline) and returns where its answer
// comes, and a stop that cancels it and waits for it; without a CurrentBroker, or with a
// broker given explicitly, the channel is nil.
func askCurrentBroker(ctx context.Context, o AutoOptions, deadline time.Time) (<-chan brokerAnswer, func()) {
	if o.CurrentBroker == nil || o.BrokerURL != "" {
		return nil, func() {}
	}
	ch := make(chan brokerAnswer, 1)
	actx, cancel := context.WithDeadline(ctx, deadline)
	done := make(chan struct{})
	go func() {
		defer close(done)
		u, err := o.CurrentBroker(actx)
		ch <- brokerAnswer{u, err}
	}()
	return ch, func() { cancel(); <-done }
}
