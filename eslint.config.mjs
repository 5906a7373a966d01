// ESLint flat config (issue 14 item 13): typescript-eslint's recommended rules over the TypeScript sources. Errors
// fail `npm run lint` (and .ci/run); the hygiene rules below only warn, each with its reason.
import eslint from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'docs/**', 'coverage/**', '**/*.js', '**/*.mjs', '**/*.cjs'] },
  eslint.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // Non-null assertions index arrays whose length the code has just checked (shapes, ranks).
      '@typescript-eslint/no-non-null-assertion': 'off',
      // `_`-prefixed names document an argument an implementation does not need; leftovers only warn.
      '@typescript-eslint/no-unused-vars': ['warn', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      'no-unused-private-class-members': 'warn',
      // `void x._storage` touches a getter for its DISPOSED check.
      '@typescript-eslint/no-unused-expressions': ['error', { allowShortCircuit: true, allowTernary: true }],
      // Empty catch blocks carry a comment saying why the error is dropped.
      'no-empty': ['error', { allowEmptyCatch: true }],
      'no-regex-spaces': 'warn',
    },
  },
  {
    // Tests load compiled fixtures and optional modules with require().
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
