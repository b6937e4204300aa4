// A real OpenID Connect provider for tests/test_oidc.py: panva's oidc-provider (certified by the
// OpenID Foundation) with its development sign-in pages, which accept any login and password.
// The login is taken as the person's email; it is verified unless it starts with "unverified".
//
//   node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI
//
// Listens on 127.0.0.1 only and prints "ready" once it does.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id, email_verified: !id.startsWith('unverified') };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  // Throwaway keys for signing this provider's cookies; tests only.
  cookies: { keys: ['keepflow-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});

provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
