// autocannon ships no type declarations; the benchmark's loader uses a small part of it.
declare module 'autocannon';
