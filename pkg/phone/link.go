package phone

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"telematics/pkg/api"
	"telematics/pkg/clock"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// The local link is the simulated short-range link (BLE/NFC) between a phone and a car: a
// small HTTP endpoint the car side opens on loopback. The phone asks the car for a challenge
// (a single-use nonce) with a fresh nonce of its own; the car answers with the challenge and
// proves that it is the car the phone means (the gateway's certification of its link key, and
// that key's signature over both nonces); only then does the phone sign a command that carries
// the challenge, and the car checks the signature against its own whitelist. No broker and no
// gateway are involved: the phone checks the certification with the gateway keys it learned at
// login (Session.LinkTrust).

// DefaultLinkAddr is where vehicle-sim serves the local link of the cars it runs.
const DefaultLinkAddr = protocol.DefaultLinkAddr

// LocalTimeout bounds one local-link exchange (challenge and command): the car is close by,
// so an answer that takes longer is not coming.
const LocalTimeout = 3 * time.Second

// ErrCarUnreachable means nothing answered on the local link's address: the phone is not near
// the car (or, in the simulation, vehicle-sim serves its link elsewhere).
var ErrCarUnreachable = errors.New("car unreachable")

// newLinkClient returns the client of one exchange with a car (challenge, then command): never
// through a proxy (the car is next to the phone, not on the internet), and with keep-alive, so
// the command goes over the connection the challenge opened. The caller closes it when the
// exchange is over: no connection outlives the exchange, and phones never share one.
func newLinkClient() (*http.Client, func()) {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: LocalTimeout}).DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     LocalTimeout,
	}
	return &http.Client{Transport: tr}, tr.CloseIdleConnections
}

// LocalSend sends r to the car over the local link at linkAddr (host:port, or an http:// URL),
// signed with the phone key for user, and returns the car's result: executed, or rejected with
// the car's reason (a rejection is a result, not an error). Before it signs anything it makes
// the car prove that it is car r.VIN, with a link certification signed by one of gatewayKeys
// (base64url DER; Session.LinkTrust): a car that cannot is refused with an error that
// wraps sign.ErrCarNotProven and carries the reason (see sign.VerifyCarProof), and gets no
// command. Other errors are for a car that could not be asked: unreachable, silent for
// LocalTimeout, or answering with an error (*api.Error: vehicle_unknown when the link serves no
// such car, bad_request).
func LocalSend(ctx context.Context, linkAddr string, gatewayKeys []string, key *sign.Signer, user string, r Request) (protocol.Result, error) {
	return localSend(ctx, linkAddr, gatewayKeys, key, user, r, clock.Real{})
}

func localSend(ctx context.Context, linkAddr string, gatewayKeys []string, key *sign.Signer, user string, r Request, clk clock.Clock) (protocol.Result, error) {
	trusted, err := decodeGatewayKeys(gatewayKeys)
	switch {
	case err != nil:
		return protocol.Result{}, err
	case key == nil:
		return protocol.Result{}, ErrNoKey
	case !protocol.ValidVIN(r.VIN):
		return protocol.Result{}, fmt.Errorf("%q is not a VIN", r.VIN)
	case !r.Action.Valid():
		return protocol.Result{}, fmt.Errorf("unknown action %q", r.Action)
	case !protocol.ValidUser(user):
		return protocol.Result{}, fmt.Errorf("%q is not a user name", user)
	}
	base := linkBase(linkAddr)
	ctx, cancel := context.WithTimeout(ctx, LocalTimeout)
	defer cancel()
	client, closeLink := newLinkClient()
	defer closeLink()

	var ch protocol.Challenge
	// Signed by the key, the request gets the challenge out of this key's own budget on the
	// car, which nobody without the key can spend (its id alone is not secret), and binds it to
	// this key.
	chReq := protocol.ChallengeRequest{V: protocol.Version, KeyID: key.KID(), TsMs: clk.Now().UnixMilli()}
	sig, err := sign.SignRaw(key.Private(), protocol.ChallengeRequestMessage(r.VIN, chReq.KeyID, chReq.TsMs))
	if err != nil {
		return protocol.Result{}, err
	}
	chReq.Sig = protocol.EncodeB64(sig)
	// The phone's own challenge to the car: fresh every time, so that only a car holding the
	// certified link key can answer it, and an answer recorded earlier proves nothing.
	phoneNonce := make([]byte, protocol.PhoneNonceMinBytes)
	rand.Read(phoneNonce) // never fails (crypto/rand: a failure crashes the program)
	chReq.PhoneNonce = protocol.EncodeB64(phoneNonce)
	if err := linkPost(ctx, client, base+"/v1/link/"+r.VIN+"/challenge", chReq, &ch); err != nil {
		return protocol.Result{}, fmt.Errorf("local link %s: challenge: %w", linkAddr, err)
	}
	if ch.VIN != r.VIN || ch.Nonce == "" {
		return protocol.Result{}, fmt.Errorf("local link %s: the challenge names car %q, not %q, or has no nonce", linkAddr, ch.VIN, r.VIN)
	}
	if err := sign.VerifyCarProof(trusted, r.VIN, chReq, ch, clk.Now()); err != nil {
		return protocol.Result{}, fmt.Errorf("local link %s: car %s refused: %w", linkAddr, r.VIN, err)
	}

	cmd := newCommand(user, key.KID(), r, clk.Now())
	cmd.Nonce = ch.Nonce
	cmd, env, err := SignCommand(key, cmd)
	if err != nil {
		return protocol.Result{}, err
	}
	var res protocol.Result
	err = linkPost(ctx, client, base+"/v1/link/"+r.VIN+"/command", protocol.LocalRequest{V: protocol.Version, Command: env}, &res)
	if err != nil {
		return protocol.Result{}, fmt.Errorf("local link %s: command: %w", linkAddr, err)
	}
	if res.ID != "" && res.ID != cmd.ID {
		return protocol.Result{}, fmt.Errorf("local link %s: the car answered for command %q, not %q", linkAddr, res.ID, cmd.ID)
	}
	if res.Status != protocol.ResultExecuted && res.Status != protocol.ResultRejected {
		return protocol.Result{}, fmt.Errorf("local link %s: the car answered with status %q", linkAddr, res.Status)
	}
	res.ID = cmd.ID
	return res, nil
}

// decodeGatewayKeys parses the gateway keys a phone trusts for car certifications; empty ones
// are skipped (a session from before the gateway said which key it uses).
func decodeGatewayKeys(keys []string) ([]*ecdsa.PublicKey, error) {
	out := make([]*ecdsa.PublicKey, 0, len(keys))
	for _, k := range keys {
		if k == "" {
			continue
		}
		pub, err := sign.DecodePublic(k)
		if err != nil {
			return nil, fmt.Errorf("gateway key: %w", err)
		}
		out = append(out, pub)
	}
	return out, nil
}

// linkBase turns "host:port" into "http://host:port"; URLs are kept as they are.
func linkBase(addr string) string {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return strings.TrimRight(addr, "/")
}

// linkPost posts in (nothing when nil) and decodes a 2xx answer into out. An error answer is
// an *api.Error, except a rejected Result a car may send with an error status: that is
// decoded into out like any result, because the car did answer the command.
func linkPost(ctx context.Context, client *http.Client, endpoint string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("the car did not answer in time: %w", context.DeadlineExceeded)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is in the caller's message already
		}
		return fmt.Errorf("%w: %w", ErrCarUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, protocol.MaxPayloadBytes+1))
	if err != nil {
		return fmt.Errorf("read the car's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		if res, ok := out.(*protocol.Result); ok {
			var r protocol.Result
			if json.Unmarshal(b, &r) == nil && r.Status == protocol.ResultRejected {
				*res = r
				return nil
			}
		}
		return api.ErrorFrom(resp.StatusCode, b)
	}
	if err := protocol.Decode(b, out); err != nil {
		return fmt.Errorf("the car's answer is not the expected JSON: %w", err)
	}
	return nil
}
