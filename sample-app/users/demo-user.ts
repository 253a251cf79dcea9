/** The account seeded at start-up, so the walkthrough works out of the box. Development only. */
export const DEMO_USER = {
  email: 'demo@example.com',
  password: 'correct horse battery staple',
} as const;
