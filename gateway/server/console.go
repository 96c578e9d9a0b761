package server

import (
	"net/http"

	"telematics/gateway/console"
	"telematics/gateway/httpapi"
	"telematics/gateway/operators"
)

// startConsole opens the operator accounts for the admin API and starts the operator console;
// the handler it returns serves the console's paths (console.Owns) and the API's everything
// else.
func (g *Gateway) startConsole() (http.Handler, error) {
	g.api.Operators = operators.New(g.store.KV())
	c, err := console.New(g.cfg.Console.config(), console.Deps{
		Store: g.store, Operators: g.api.Operators, TwoFA: g.twofa, Audit: g.audit,
		Twins: g.router, Whitelists: g.keys, Credentials: g.api, Members: g.keys, Ready: g.ready,
		Hashes: g.api.Hashes, PasswordParams: g.api.PasswordParams, UserLockout: g.api.Lockout,
		LoginLimit: httpapi.NewAddrLimiter(g.cfg.Login.PerIPRatePerMinute, g.cfg.Login.PerIPBurst, g.clock),
		Clock:      g.clock, Log: g.log.With("component", "console"),
	})
	if err != nil {
		return nil, err
	}
	g.console = c
	apiHandler := g.api.Handler()
	consoleHandler := c.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if console.Owns(r.URL.Path) {
			consoleHandler.ServeHTTP(w, r)
			return
		}
		apiHandler.ServeHTTP(w, r)
	}), nil
}

// closeConsole ends the console's event streams first, so that the HTTP server's graceful
// shutdown does not wait for them.
func (g *Gateway) closeConsole() {
	if g.console != nil {
		g.console.Close()
	}
}
