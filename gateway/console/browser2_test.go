package console_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// newPage starts headless Chromium on base; the test's end closes it.
func newPage(t *testing.T, base string) *page {
	bin := chromium(t)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 900))...)
	t.Cleanup(cancel)
	bctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	bctx, cancel = context.WithTimeout(bctx, 4*time.Minute)
	t.Cleanup(cancel)
	p := &page{t: t, ctx: bctx, base: base, shot: artifacts(t)}
	t.Logf("screenshots in %s", p.shot)
	return p
}

// An owner revokes a driver's key through the app API while the car is away; the car page
// shows the revocation waiting for the car, and, once the car is back and acknowledges, the
// same page (no reload) shows it on the car. The command timeline shows the owner's unlock
// live, and an admin removes a user from the car (confirmed, then shown done). The users
// page shows who enrolled 2FA.
func TestRevocationAckFlipsOnTheCarPage(t *testing.T) {
	chromium(t)
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.TwoFA.Mode = twofa.ModeOff
	}})
	creds, err := cloud.Provision(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	vin := creds[0].VIN
	fleetDir := t.TempDir()
	fo := harness.FleetOptions{Dir: fleetDir, BrokerURL: cloud.BrokerURL(), Creds: creds, TelemetryInterval: 200 * time.Millisecond}
	fl, err := harness.StartFleet(ctx, fo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Stop() })
	if err := cloud.WaitOnline(ctx, pageWait, vin); err != nil {
		t.Fatal(err)
	}
	alice := &harness.Person{Name: "alice", Password: "alice password 1"}
	bob := &harness.Person{Name: "bob", Password: "bob password 1"}
	if err := cloud.AddUser(ctx, alice.Name, alice.Password, vin); err != nil {
		t.Fatal(err)
	}
	if err := cloud.AddUser(ctx, bob.Name, bob.Password, ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*harness.Person{alice, bob} {
		if err := p.Login(ctx, cloud); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Enroll(ctx, cloud); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.Pair(ctx, vin); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Session.Client().ShareKey(ctx, api.ShareRequest{VIN: vin, User: bob.Name, Role: protocol.RoleDriver}); err != nil {
		t.Fatal(err)
	}
	bobKey, err := bob.Pair(ctx, vin)
	if err != nil {
		t.Fatal(err)
	}
	if err := cloud.WaitSynced(ctx, pageWait, vin); err != nil {
		t.Fatal(err)
	}
	if _, err := cloud.Client().AddOperator(ctx, "olga", "admin", opPassword); err != nil {
		t.Fatal(err)
	}

	p := newPage(t, cloud.HTTPURL())
	p.enroll("olga")
	p.goHash("open the car page", "#car/"+vin)
	p.until("see the car page", `document.querySelector('#car-state')?.offsetParent != null`)
	keys := `(document.querySelector('#car-keys')?.textContent ?? '')`
	p.until("bob's key on the car", keys+`.includes('bob') && !`+keys+`.includes('not yet on the car')`)
	p.do("mark the page", chromedp.Evaluate[chromedp.Void](`window.__sameDocument = true`))

	// The owner's unlock appears on the timeline, live: who, path, factors, states, latency.
	app, err := phone.ConnectWith(ctx, alice.Session, phone.ConnectOptions{Key: alice.Key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	rep, err := app.Send(ctx, phone.Request{VIN: vin, Action: protocol.ActionUnlock}, nil)
	if err != nil || rep.Status != protocol.ReplyExecuted {
		t.Fatalf("unlock: %+v %v", rep, err)
	}
	row := fmt.Sprintf(`(document.querySelector('#cmd-%s')?.textContent ?? '')`, rep.ID)
	p.until("the unlock on the timeline", row+`.includes('executed') && `+row+`.includes('alice') && `+row+`.includes('cloud') && `+row+`.includes(' ms')`)
	p.screenshot("car-timeline")

	// The car goes away; the owner revokes bob's key: the page shows it waiting for the car.
	fl.Stop()
	if _, err := alice.Session.Client().RevokeKey(ctx, api.RevokeRequest{VIN: vin, KeyID: bobKey.ID}); err != nil {
		t.Fatal(err)
	}
	p.until("revocation waiting for the car", keys+`.includes('revoked, not yet on the car')`)
	p.screenshot("car-revocation-waiting")

	// The car comes back and acknowledges: the same page flips to acknowledged.
	fl, err = harness.StartFleet(ctx, fo)
	if err != nil {
		t.Fatal(err)
	}
	if err := cloud.WaitSynced(ctx, pageWait, vin); err != nil {
		t.Fatal(err)
	}
	p.until("revocation on the car", keys+`.includes('revoked, on the car')`)
	p.until("no reload", `window.__sameDocument === true`)
	p.screenshot("car-revocation-acknowledged")

	// An admin removes alice from the car (confirmed): she is gone from its users.
	p.do("accept the confirmation", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`))
	p.click("remove alice from the car", "#remove-alice")
	p.until("alice gone from the car's users", `!(document.querySelector('#car-users')?.textContent ?? '').includes('alice')`)

	// The users page: both enrolled.
	p.goHash("open the users page", "#users")
	p.until("see the users page", `document.querySelector('#users-table')?.offsetParent != null`)
	p.until("alice enrolled", `document.querySelector('#user-alice td[data-field="2fa"]')?.textContent === 'enrolled'`)
	p.screenshot("users")
}
